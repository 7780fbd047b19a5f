"""A node running in a background thread of the current process: for ``nexus demo`` and
for scripts that want a private node without starting ``nexus-node``."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from types import TracebackType

from nexus_node.llm import DEFAULT_MODEL, resolve
from nexus_node.node.node import Node, NodeConfig


class EmbeddedNode:
    """``with EmbeddedNode(data_dir) as address:`` — a loopback node with no token."""

    def __init__(self, data_dir: Path | str, slots: int | None = None, port: int = 0, **config: object) -> None:
        # Like nexus-node with default flags: Gemini when the environment has a key.
        config.setdefault("llm", resolve("auto", DEFAULT_MODEL, "", os.environ))
        self.config = NodeConfig(host="127.0.0.1", port=port, data_dir=Path(data_dir), slots=slots, **config)  # type: ignore[arg-type]
        self.node: Node | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> str:
        self._thread = threading.Thread(target=self._run, name="nexus-embedded-node", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self.node is not None
        return self.node.address

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        node = Node(self.config)
        try:
            await node.start()
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self.node = node
        self._ready.set()
        await self._stop.wait()
        await node.stop()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join()
