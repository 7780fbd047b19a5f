"""Moving a snapshot file from a leader to a member: chunked, checksummed and resumable.

The Raft core sends and takes only a snapshot's metadata (:class:`~.raft.MsgSnap`). The file it
stands for (written by :mod:`~nexus_node.consensus.snapshot_file`, tens of megabytes for a long
history) travels on ``PeerService.InstallSnapshot``, a stream of its own, and the receiver steps
the message into its core only once it holds the whole file and the file matches its SHA-256.

* :func:`send_snapshot`, the sender: a header, then the file from where the receiver says it
  stands, in chunks each with its own SHA-256.
* :class:`IncomingSnapshot`, the receiver's partial file, named by the whole file's SHA-256 so a
  transfer that broke off resumes where its last verified chunk ended. A chunk that does not
  match its checksum is refused and nothing of it is kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import grpc

from nexus_node._generated.nexus.v1 import peer_pb2 as pb
from nexus_node.consensus.raft import MsgSnap, SnapshotMeta, message_to_dict
from nexus_node.consensus.snapshot_file import SnapshotDamaged, SnapshotFile, verify_snapshot

#: Bytes per chunk: well under gRPC's message limit, big enough that the per-chunk cost is small.
CHUNK_BYTES = 1 << 20
#: A transfer may take this long per megabyte, on top of the peer RPC timeout.
SECONDS_PER_MB = 0.5
#: Disk left free after a snapshot is received (the node's other files need room too).
DISK_MARGIN = 64 << 20


class ChunkRefused(ValueError):
    """A chunk does not fit the transfer (wrong offset, too long) or does not match its SHA-256."""


class NoRoom(OSError):
    """The receiver's disk cannot hold the snapshot; the message says how much it needs."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def transfer_timeout(size: int, rpc_timeout: float) -> float:
    """The deadline of one transfer of ``size`` bytes."""
    return rpc_timeout + SECONDS_PER_MB * size / (1 << 20) + 5.0


async def send_snapshot(stub: Any, metadata: Any, cluster: str, node_id: str, message: MsgSnap,
                        file: SnapshotFile, rpc_timeout: float) -> int:
    """Sends ``file`` for ``message`` to the peer behind ``stub``; returns the bytes sent.

    Raises:
        grpc.aio.AioRpcError: the peer refused the snapshot or a chunk, or the call failed.
        ValueError: the file is not the snapshot the message stands for, or the peer did not
            say it took it.
    """
    meta = file.meta
    if (meta.index, meta.term, meta.config) != (message.snap_index, message.snap_term, message.config):
        raise ValueError(f"snapshot file {file.path.name} is not the one of {message}")
    call = stub.InstallSnapshot(metadata=metadata, timeout=transfer_timeout(file.size, rpc_timeout))
    try:
        await call.write(pb.SnapshotChunk(
            cluster=cluster, from_node=node_id, size=file.size, sha256=file.sha256,
            message=json.dumps(message_to_dict(message), separators=(",", ":")).encode()))
        answer = await call.read()
        if answer is grpc.aio.EOF:
            raise ValueError("the peer ended the transfer without an answer")
        offset = min(answer.have, file.size)
        sent = 0
        # The open file keeps its bytes even if a newer snapshot replaces it meanwhile.
        with open(file.path, "rb") as f:
            f.seek(offset)
            while offset < file.size:
                data = await asyncio.to_thread(f.read, CHUNK_BYTES)
                if not data:
                    raise ValueError(f"snapshot file {file.path.name} is shorter than {file.size} bytes")
                await call.write(pb.SnapshotChunk(offset=offset, data=data, chunk_sha256=_sha256(data)))
                offset += len(data)
                sent += len(data)
        await call.done_writing()
        answer = await call.read()
        if answer is grpc.aio.EOF or not answer.done:
            raise ValueError("the peer did not confirm the snapshot")
        return sent
    finally:
        call.cancel()


class IncomingSnapshot:
    """A snapshot file being received into ``directory`` (the log store's snapshot folder).

    Args:
        directory: Where the file goes once complete (and its partial file meanwhile).
        message: The MsgSnap it stands for.
        size: The whole file's size.
        sha256: The whole file's SHA-256 (hex).

    Raises:
        ValueError: ``size`` or ``sha256`` is malformed.
        NoRoom: the disk cannot hold it (with :data:`DISK_MARGIN` to spare).
    """

    def __init__(self, directory: Path, message: MsgSnap, size: int, sha256: str) -> None:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"a snapshot's sha256 is 64 lowercase hex digits, not {sha256[:80]!r}")
        if size <= 0:
            raise ValueError(f"a snapshot of {size} bytes")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.message = message
        self.size = size
        self.sha256 = sha256
        self.part = directory / f"incoming-{sha256}.part"
        held = self.part.stat().st_size if self.part.exists() else 0
        if held > size:
            self.part.unlink()
            held = 0
        free = shutil.disk_usage(directory).free
        if size - held + DISK_MARGIN > free:
            raise NoRoom(f"a snapshot of {size >> 20} MB does not fit: {free >> 20} MB free, and "
                         f"{DISK_MARGIN >> 20} MB must stay free")
        self.have = held
        self._file = open(self.part, "ab")

    def write(self, offset: int, data: bytes, chunk_sha256: str) -> None:
        """Appends a chunk once it is checked.

        Raises:
            ChunkRefused: it does not start at :attr:`have`, runs past the size, or does not
                match ``chunk_sha256``. Nothing of it is kept.
        """
        if offset != self.have:
            raise ChunkRefused(f"chunk at offset {offset}, expected {self.have}")
        if offset + len(data) > self.size:
            raise ChunkRefused(f"chunk at offset {offset} runs past the snapshot's {self.size} bytes")
        if _sha256(data) != chunk_sha256:
            raise ChunkRefused(f"chunk at offset {offset} does not match its SHA-256: refused, "
                               f"{self.have} bytes kept for the next try")
        self._file.write(data)
        self.have += len(data)

    def close(self) -> None:
        """Keeps what was received (a later transfer of the same file resumes from it)."""
        if not self._file.closed:
            self._file.flush()
            self._file.close()

    def finish(self) -> SnapshotFile:
        """Checks the whole file and moves it into the snapshot folder. Runs on a thread.

        Raises:
            ChunkRefused: the file is incomplete or does not match its SHA-256 (the partial
                file is removed: its verified chunks add up to something else).
            SnapshotDamaged: it is not a snapshot, or not the one the message stands for.
        """
        self._file.flush()
        os.fsync(self._file.fileno())
        self.close()
        if self.have != self.size:
            raise ChunkRefused(f"the transfer ended at {self.have} of {self.size} bytes")
        digest = hashlib.sha256()
        with open(self.part, "rb") as f:
            while block := f.read(CHUNK_BYTES):
                digest.update(block)
        if digest.hexdigest() != self.sha256:
            self.part.unlink(missing_ok=True)
            raise ChunkRefused("the snapshot does not match its SHA-256 (every chunk did): refused")
        m = self.message
        final = self.directory / f"snap-{m.snap_index}-{m.snap_term}.jsonl"
        os.replace(self.part, final)
        try:
            file = verify_snapshot(final)
        except SnapshotDamaged:
            final.unlink(missing_ok=True)
            raise
        want = SnapshotMeta(m.snap_index, m.snap_term, m.config)
        if file.meta != want:
            final.unlink(missing_ok=True)
            raise SnapshotDamaged(f"{final.name} stands for {file.meta}, not {want}")
        return file
