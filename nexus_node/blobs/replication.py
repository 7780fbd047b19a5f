"""Blobs across the mesh: fetch what this node lacks from a peer that holds it, and keep copies.

Placement is in the replicated records (which nodes hold which sha256). A node that needs a blob
it lacks (the coordinator preparing a dataset uploaded elsewhere, any node serving a model)
streams it from a holder with ``PeerService.FetchBlob``, checks the hash, stores it and records
itself as a holder. Besides, every blob should live on ``replicas`` nodes: the nodes that keep
it are the first ``replicas`` members in rendezvous order of ``sha256(blob + node)`` (a pure
choice every node computes alike, which moves few blobs when members come and go), and those
fetch it as soon as its placement is applied, or when a change of members makes them keepers
(:meth:`BlobSync.rebalance`).

The store has a size bound (``--blob-cache-mb``): after each fetch, a node over it drops
cached copies (not the ones it keeps for the cluster) by the rules of
:mod:`nexus_node.blobs.cache`, recording the drop before deleting the file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Collection, Coroutine, Iterable, Mapping, Protocol

import grpc

from nexus_node._generated.nexus.v1 import peer_pb2 as pb
from nexus_node.blobs import files
from nexus_node.blobs.cache import HeldBlob, to_drop
from nexus_node.blobs.store import BlobStore
from nexus_node.consensus.transport import PeerTransport
from nexus_node.errors import FailedPrecondition

log = logging.getLogger(__name__)



#: Blob kinds kept only by the node that made them: a trial's validation predictions, which
#: finalize may use for an ensemble and does without when their node is gone. Copying each
#: trial's predictions to ``--replicas`` nodes cost two consensus writes and a fetch per trial,
#: and every rejoining keeper fetched them all. An ensemble member refitted for finalize
#: (:data:`MEMBER_BLOB`) is read once, by the node that assembles the ensemble; should its
#: node go first, finalize drops that member, as it does one whose refit failed.
MEMBER_BLOB = "member"
UNREPLICATED = frozenset({"predictions", MEMBER_BLOB})

@dataclasses.dataclass
class BlobInfo:
    """A blob's replicated placement: its size, what it is, and the nodes that hold it."""

    sha256: str
    size: int
    kind: str
    holders: set[str] = dataclasses.field(default_factory=set)
    job_id: str = ""   # the job it was made for ("" : none recorded); see blobs/gc.py


class Placement(Protocol):
    """Where blob placement is replicated (the node's records implement it): which nodes hold
    which blob, and the writers that record this node taking or dropping a copy."""

    @property
    def blobs(self) -> Mapping[str, BlobInfo]: ...

    @property
    def blob_listeners(self) -> list[Callable[[BlobInfo], None]]: ...

    def holders(self, sha256: str) -> set[str]: ...

    async def put_blob(self, sha256: str, size: int, kind: str, term: int | None = None,
                       job_id: str = "") -> None: ...

    async def drop_blob(self, sha256: str) -> None: ...


def keepers(sha256: str, members: Iterable[str], replicas: int) -> list[str]:
    """The members that should hold blob ``sha256`` (rendezvous hashing)."""
    ranked = sorted(members, key=lambda n: hashlib.sha256(f"{sha256}/{n}".encode()).digest())
    return ranked[:max(1, replicas)]


class BlobSync:
    """Fetches and replicates blobs for one node.

    Args:
        node_id: This node.
        store: Its blob store.
        records: The replicated placement.
        transport: For FetchBlob calls (token attached).
        members: Current members (voters and learners).
        replicas: Copies each blob should have.
        bound_bytes: The store's size bound (0: none); see :mod:`nexus_node.blobs.cache`.
        min_idle: Seconds a cached copy must go unused before it may be dropped.
        wait_for: Waits until a predicate over the applied state holds (the driver's).
    """

    def __init__(self, node_id: str, cluster: str, store: BlobStore, records: Placement,
                 transport: PeerTransport, members: Callable[[], set[str]], replicas: int = 2,
                 bound_bytes: int = 0, min_idle: float = 60.0, *,
                 wait_for: Callable[[Callable[[], bool], float], Awaitable[None]]) -> None:
        self.node_id, self.cluster, self.store, self.records = node_id, cluster, store, records
        self.transport, self.members, self.replicas = transport, members, replicas
        self.bound_bytes, self.min_idle = bound_bytes, min_idle
        self._wait_for = wait_for
        self._trimming = asyncio.Lock()
        self._trim_pending = False
        self._fetching: dict[str, asyncio.Task[Path]] = {}
        self._background: set[asyncio.Task[object]] = set()
        records.blob_listeners.append(self._placed)

    def local(self, sha256: str) -> Path | None:
        """(blocking: call it in a thread)"""
        path = self.store.path(sha256)
        return path if path.is_file() else None

    def fetching(self) -> Collection[str]:
        """The blobs being fetched now."""
        return self._fetching.keys()

    def _local_touched(self, sha256: str) -> Path | None:
        path = self.local(sha256)
        if path is not None:
            _touch(path)   # the file's mtime is its last use: the cache drops the oldest first
        return path

    async def ensure(self, sha256: str) -> Path:
        """The local path of blob ``sha256``, fetched from a holder first if needed.

        Raises:
            FailedPrecondition: no reachable node holds it.
        """
        path = await asyncio.to_thread(self._local_touched, sha256)
        if path is not None:
            return path
        task = self._fetching.get(sha256)
        if task is None:
            task = self._fetching[sha256] = asyncio.create_task(self._fetch(sha256))
            task.add_done_callback(lambda _: self._fetching.pop(sha256, None))
        return await asyncio.shield(task)

    def fetch_order(self, sha256: str) -> list[str]:
        """The holders of ``sha256`` other than this node, in the order a fetch tries them:
        an order of each blob's own (by ``sha256(blob + holder)``), so that the blobs one
        task fetches at once are streamed from different holders."""
        holders = self.records.holders(sha256) - {self.node_id}
        return sorted(holders, key=lambda h: hashlib.sha256(f"{sha256}:{h}".encode()).digest())

    async def _fetch(self, sha256: str) -> Path:
        """Streams the blob from its holders in :meth:`fetch_order`. A stream cut short (a
        holder that died or went away mid-transfer) resumes from the next holder at the byte
        where it stopped; bytes that do not match the hash once whole are refused, and the
        blob is fetched again from the start from the holders that sent none of them."""
        errors: list[str] = []
        tmp = await asyncio.to_thread(self.store.new_temp, ".part")
        digest, got, senders = hashlib.sha256(), 0, []
        recorded = self.records.blobs.get(sha256)
        size = recorded.size if recorded is not None and recorded.size > 0 else None
        try:
            for holder in self.fetch_order(sha256):
                address = self.transport.host.peer_address(holder)
                if not address:
                    errors.append(f"{holder}: address unknown")
                    continue
                try:
                    async with files.Writer(tmp, append=True) as f:
                        call = self.transport.stub(address).FetchBlob(
                            pb.FetchBlobRequest(cluster=self.cluster, sha256=sha256, offset=got),
                            metadata=self.transport.metadata, timeout=600)
                        async for chunk in call:
                            if holder not in senders:
                                senders.append(holder)
                            digest.update(chunk.data)
                            await f.write(chunk.data)
                            got += len(chunk.data)
                            if size is not None and got > size:
                                call.cancel()   # more than the blob holds: refused below
                                break
                except grpc.aio.AioRpcError as exc:
                    errors.append(f"{holder}: {exc.code().name} {exc.details()} after byte {got}")
                    if size is None or got < size:
                        continue   # the next holder goes on from byte ``got``
                if digest.hexdigest() != sha256:
                    errors.append(f"{', '.join(senders)}: content does not match its hash")
                    await asyncio.to_thread(os.truncate, tmp, 0)
                    digest, got, senders = hashlib.sha256(), 0, []
                    continue
                got_sha, stored = await asyncio.to_thread(self.store.ingest, tmp)
                info = self.records.blobs.get(sha256)
                log.info("fetched blob %s (%d bytes) from %s", sha256[:12], stored, ", ".join(senders))
                # Recorded in the background: the blob is here whether or not that commits now.
                self._spawn(self._record_holder(got_sha, stored, info.kind if info else "blob",
                                                info.job_id if info else ""))
                self._request_trim()
                return self.store.path(got_sha)
        finally:
            await files.remove(tmp)
        why = "; ".join(errors) if errors else "no node is recorded as holding it"
        raise FailedPrecondition(f"blob {sha256[:12]} is not on this node and could not be fetched ({why})")

    async def _record_holder(self, sha256: str, size: int, kind: str, job_id: str) -> None:
        try:
            await self.records.put_blob(sha256, size, kind, job_id=job_id)
        except Exception as exc:  # noqa: BLE001 - the copy is still used locally
            log.info("could not record this node as holder of %s: %s", sha256[:12], exc)

    def held(self) -> list[HeldBlob]:
        """Every blob in this node's store, as the cache rules see it."""
        members = self.members()
        out = []
        for path in self.store.blob_files():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            sha = path.name
            keep = keepers(sha, members, self.replicas)
            out.append(HeldBlob(sha, st.st_size, st.st_mtime, self.node_id in keep,
                                len(self.records.holders(sha) & (set(keep) - {self.node_id}))))
        return out

    def _request_trim(self) -> None:
        if self.bound_bytes and not self._trim_pending:
            self._trim_pending = True
            self._spawn(self.trim())

    async def trim(self) -> list[str]:
        """Drops cached copies while the store is over its bound; returns what was dropped."""
        dropped: list[str] = []
        async with self._trimming:
            self._trim_pending = False
            wanted = min(self.replicas, len(self.members()))
            held = await asyncio.to_thread(self.held)
            for sha in to_drop(held, self.bound_bytes, time.time(), wanted, self.min_idle):
                if sha in self._fetching:
                    continue
                try:
                    await self.records.drop_blob(sha)
                except Exception as exc:  # noqa: BLE001 - not recorded: keep the file, try next time
                    log.info("could not record dropping blob %s: %s", sha[:12], exc)
                    break
                await files.remove(self.store.path(sha))
                dropped.append(sha)
            if dropped:
                log.info("dropped %d cached blob(s) to stay under %d MB", len(dropped), self.bound_bytes >> 20)
        return dropped

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def replicated(self, sha256: str, timeout: float = 10.0) -> None:
        """Waits until blob ``sha256`` has ``replicas`` holders among the members (fewer in a
        smaller cluster), at most ``timeout`` seconds (a keeper that is down never fetches)."""
        want = min(self.replicas, len(self.members()))
        try:
            await self._wait_for(lambda: len(self.records.holders(sha256) & self.members()) >= want,
                                               timeout)
        except TimeoutError:
            log.warning("blob %s has %d of %d copies after %.0f s; going on", sha256[:12],
                        len(self.records.holders(sha256)), want, timeout)

    def _placed(self, info: BlobInfo) -> None:
        if self.local(info.sha256) is not None:
            self._request_trim()   # a keeper's copy landing may make this node's copy droppable
        self._fetch_if_kept(info)

    def rebalance(self) -> None:
        """The members changed: fetch every blob this node keeps now and lacks. When a keeper
        is removed (a dead node, after ``--remove-after``), the next member in rendezvous
        order takes its place, so the cluster is back to ``replicas`` copies while a copy
        survives somewhere."""
        for info in list(self.records.blobs.values()):
            if self.records.holders(info.sha256):
                self._fetch_if_kept(info)

    def _fetch_if_kept(self, info: BlobInfo) -> None:
        """A placement was applied: fetch the blob if this node is one of its keepers (never
        an :data:`UNREPLICATED` kind)."""
        if info.kind in UNREPLICATED or info.sha256 in self._fetching or self.local(info.sha256) is not None:
            return
        if self.node_id not in keepers(info.sha256, self.members(), self.replicas):
            return
        self._spawn(self._replicate(info.sha256))

    async def _replicate(self, sha256: str) -> None:
        try:
            await self.ensure(sha256)
        except Exception as exc:  # noqa: BLE001 - a keeper retries when placement changes again
            log.warning("could not replicate blob %s: %s", sha256[:12], exc)

    async def close(self) -> None:
        tasks = [*self._background, *self._fetching.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:   # gone or read-only: the order of drops is all that depends on it
        pass
