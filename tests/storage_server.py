"""A node's Optuna StorageService (api/storage_service.py) on a free loopback port, over any
Optuna storage: what the runner and wire tests talk to instead of a whole node."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import grpc
from optuna.storages import BaseStorage

from nexus_node.api.storage_service import add_storage_service
from tests.conftest import free_port


@contextlib.contextmanager
def storage_server(writes: BaseStorage, reads: BaseStorage | None = None) -> Iterator[int]:
    """Serves ``writes`` (and ``reads``, a second storage over the same data, as a node holds
    them; ``writes`` itself when not given) until the block ends; yields the port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="storage-server-loop", daemon=True)
    thread.start()
    pool = ThreadPoolExecutor(4, thread_name_prefix="storage")
    port = free_port()

    async def start() -> grpc.aio.Server:
        server = grpc.aio.server()
        add_storage_service(server, lambda: writes, lambda: reads if reads is not None else writes, pool)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(30)
        pool.shutdown(wait=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
