"""The blob collector: each node removes its own garbage blobs (the rules: :mod:`.gc`).

One task per node. A pass lists the store, asks the records which blobs are live, and removes
the garbage that has waited out its grace period: a copy recorded as this node's is first
recorded as dropped (``drop_blob``, committed before the file goes, as the cache does, so no
node is sent to a copy that is gone), then deleted unless it was used meanwhile. A pass runs
when a job or model is deleted or a blob placed (:meth:`BlobCollector.poke`), when the next
garbage falls due, and at least every ``interval`` seconds. It also measures the store for
``nexus cluster`` (every file arrives before its placement is recorded, so the figure counts it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Collection

from nexus_node.blobs.gc import StoredBlob, sweep
from nexus_node.blobs.replication import Placement
from nexus_node.blobs.store import BlobStore

log = logging.getLogger(__name__)


class BlobCollector:
    """Removes this node's garbage blobs.

    Args:
        node_id: This node.
        store: Its blob store.
        records: The replicated placement (drops are recorded there).
        live: The blobs a live record needs now (read on the event loop).
        grace: Seconds a garbage file must go unused before it is removed.
        busy: Blobs being fetched now (never removed under a fetch).
        interval: The longest time between two passes.
        clock: Wall-clock seconds (file times are wall-clock).
    """

    def __init__(self, node_id: str, store: BlobStore, records: Placement, live: Callable[[], set[str]],
                 grace: float, busy: Callable[[], Collection[str]] = tuple, interval: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.node_id, self.store, self.records, self.live = node_id, store, records, live
        self.grace, self.busy, self.interval, self.clock = grace, busy, interval, clock
        #: ``(blobs, bytes)`` in the store at the last pass.
        self.usage: tuple[int, int] = (0, 0)
        #: Called after a pass that changed :attr:`usage`.
        self.on_change: Callable[[], None] = lambda: None
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="blob-collector")

    def poke(self) -> None:
        """Something may have become garbage: run a pass soon (on the event loop)."""
        self._poked.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            self._poked.clear()
            try:
                next_due = await self.collect()
            except Exception:  # noqa: BLE001 - a failed pass is retried at the next one
                log.exception("blob collection failed")
                next_due = None
            wait = self.interval if next_due is None else min(self.interval, max(0.0, next_due - self.clock()))
            try:
                await asyncio.wait_for(self._poked.wait(), wait + 0.05)
            except TimeoutError:
                pass

    async def collect(self) -> float | None:
        """One pass; returns when the next garbage falls due (None: none is waiting)."""
        stored = await asyncio.to_thread(self._stored)
        now = self.clock()
        decision = sweep(stored, self.live(), now, self.grace)
        sizes = {b.sha256: b.size for b in stored}
        removed = 0
        for sha in decision.remove:
            if sha in self.busy():
                continue
            info = self.records.blobs.get(sha)
            held = info is not None and self.node_id in info.holders
            if held:
                try:
                    await self.records.drop_blob(sha)
                except Exception as exc:  # noqa: BLE001 - not recorded: keep the file, try next pass
                    log.info("could not record dropping blob %s: %s", sha[:12], exc)
                    break
            # Live again, or used, since the decision (the same bytes uploaded for a new job):
            # kept, and recorded as held again if the drop went through.
            if sha in self.live() or not await asyncio.to_thread(
                    self.store.remove_if_unused, sha, self.clock() - self.grace):
                if info is not None and held:
                    try:
                        await self.records.put_blob(sha, info.size, info.kind, job_id=info.job_id)
                    except Exception as exc:  # noqa: BLE001 - the copy is still used locally
                        log.info("could not record this node as holder of %s again: %s", sha[:12], exc)
                continue
            removed += 1
            sizes.pop(sha, None)
        if removed:
            log.info("removed %d blob(s) no record needs", removed)
        usage = (len(sizes), sum(sizes.values()))
        if usage != self.usage:
            self.usage = usage
            self.on_change()
        return decision.next_due

    def _stored(self) -> list[StoredBlob]:
        """(blocking)"""
        out = []
        for path in self.store.blob_files():
            try:
                st = path.stat()
            except FileNotFoundError:   # dropped meanwhile
                continue
            out.append(StoredBlob(path.name, st.st_size, st.st_mtime))
        return out
