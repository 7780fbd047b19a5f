"""File I/O for coroutines: every call that touches the disk runs in a thread.

A read or write of a blob can wait on a slow or busy disk for as long as the disk likes; on
the event loop that wait would stall every RPC, heartbeat and Raft tick of the node (STYLE §8).
Chunks are passed one thread hop each, so a stream holds one chunk in memory, never the file.
The test suite fails a test that opens a file on the loop (tests/blocking.py).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import IO, AsyncIterator

#: Bytes per read: well under gRPC's message limit, large enough to stream fast.
CHUNK = 1 << 20


async def read_chunks(path: Path, chunk_size: int = CHUNK, offset: int = 0) -> AsyncIterator[bytes]:
    """The file's bytes from ``offset`` on, in order, ``chunk_size`` at a time."""
    f: IO[bytes] = await asyncio.to_thread(open, path, "rb")
    try:
        if offset:
            await asyncio.to_thread(f.seek, offset)
        while chunk := await asyncio.to_thread(f.read, chunk_size):
            yield chunk
    finally:
        await asyncio.to_thread(f.close)


class Writer:
    """A file written chunk by chunk (``async with Writer(path) as w: await w.write(b)``);
    ``append`` adds to what the file holds."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = path
        self._mode = "ab" if append else "wb"
        self._f: IO[bytes] | None = None

    async def __aenter__(self) -> "Writer":
        self._f = await asyncio.to_thread(open, self.path, self._mode)
        return self

    async def write(self, data: bytes) -> None:
        assert self._f is not None
        await asyncio.to_thread(self._f.write, data)

    async def __aexit__(self, *exc: object) -> None:
        assert self._f is not None
        await asyncio.to_thread(self._f.close)


async def remove(path: Path) -> None:
    """Removes a file or a directory tree, if it is there."""
    def _remove() -> None:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    await asyncio.to_thread(_remove)
