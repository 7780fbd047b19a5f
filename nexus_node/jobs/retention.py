"""Retention: the coordinator deletes ended jobs past ``--keep-jobs`` or ``--keep-days``.

:func:`expired` is the rule (pure). A job that has not ended is never expired. Retention keeps
models: it deletes a job's record, study and data (most of what a job leaves behind), never
the model a client may still be predicting with; ``nexus delete MODEL`` removes a model.

:class:`Retention` applies the rule while this node coordinates: when it starts coordinating,
whenever a job ends, and every :data:`RECHECK_S` seconds (for ``--keep-days``). Its writes,
the study's deletion included, are fenced to the coordinator's term like its other writes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable

from nexus_node.consensus.driver import MeshStopped
from nexus_node.consensus.raft import NotLeader
from nexus_node.errors import NexusError
from nexus_node.jobs.context import JobContext
from nexus_node.jobs.deletion import delete_job
from nexus_node.jobs.records import JobRecord
from nexus_node.study.journal import fenced_context

log = logging.getLogger(__name__)

#: Seconds between two passes when no job ends meanwhile.
RECHECK_S = 600.0
DAY_S = 86400.0


def expired(jobs: Iterable[JobRecord], now: float, keep_jobs: int = 0, keep_days: float = 0.0) -> list[str]:
    """The ended jobs retention deletes, oldest first: those past the newest ``keep_jobs``
    ended jobs, and those that ended more than ``keep_days`` days before ``now`` (0: no such
    limit). Jobs are ranked by when they ended (or, lacking that, were created)."""
    ended = sorted((j for j in jobs if j.terminal), key=lambda j: (j.finished_at or j.created_at, j.job_id),
                   reverse=True)
    out = [j.job_id for i, j in enumerate(ended)
           if (keep_jobs > 0 and i >= keep_jobs)
           or (keep_days > 0 and now - (j.finished_at or j.created_at) > keep_days * DAY_S)]
    return out[::-1]


class Retention:
    """Applies :func:`expired` while this node coordinates (see the module docstring)."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        s = self.ctx.settings
        return s.keep_jobs > 0 or s.keep_days > 0

    def start(self, term: int | None) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(term), name="retention", context=fenced_context(term))

    def poke(self) -> None:
        """A job ended (event loop)."""
        self._poked.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self, term: int | None) -> None:
        while True:
            self._poked.clear()
            try:
                await self.apply(term)
            except (NotLeader, MeshStopped):
                return   # the next coordinator applies it
            except Exception:  # noqa: BLE001 - tried again at the next pass
                log.exception("retention pass failed")
            try:
                await asyncio.wait_for(self._poked.wait(), RECHECK_S)
            except TimeoutError:
                pass

    async def apply(self, term: int | None) -> list[str]:
        """One pass: deletes the expired jobs (keeping their models); returns their ids."""
        s = self.ctx.settings
        deleted: list[str] = []
        for job_id in expired(await self.ctx.db.list_jobs(), self.ctx.clock(), s.keep_jobs, s.keep_days):
            try:
                await delete_job(self.ctx, job_id, keep_models=True, term=term)
            except NexusError as e:   # deleted meanwhile by a user
                log.info("retention: job %s: %s", job_id, e)
                continue
            deleted.append(job_id)
        if deleted:
            log.info("retention (--keep-jobs %d, --keep-days %g) deleted %d ended job(s): %s",
                     s.keep_jobs, s.keep_days, len(deleted), ", ".join(deleted))
        return deleted
