"""Jobs of the cluster as one node sees them: the one object the API and the node talk to.

A thin facade over the parts, each one place for its decisions:

* :mod:`~nexus_node.jobs.intake`: what a job must be to be accepted; submitting it.
* :mod:`~nexus_node.jobs.queries`: reads (jobs, trials, models) and predictions.
* :mod:`~nexus_node.jobs.lifecycle`: the state machine the coordinator drives, and resuming it.
* :mod:`~nexus_node.jobs.search`: the search loop and its trials; :mod:`~nexus_node.jobs.budget`
  (pure) decides when it ends; :mod:`~nexus_node.jobs.recovery` fails and re-runs trials
  nobody runs any more, by :mod:`nexus_node.work.retries`' rule.
* :mod:`~nexus_node.jobs.deletion`: deleting an ended job or a model; and
  :mod:`~nexus_node.jobs.retention`, which the coordinator applies with it.
* :mod:`~nexus_node.jobs.context`: the state they share, and the clock.

Every node answers reads from the replicated records and commits submits, cancels and deletes
through consensus; only the coordinator (the consensus leader) drives jobs, between :meth:`activate`
and :meth:`deactivate`.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

from nexus_node.blobs.store import BlobStore
from nexus_node.errors import FailedPrecondition
from nexus_node.jobs import deletion, intake
from nexus_node.jobs.context import RUNNING_LOST, ChangeFeed, JobContext, ManagerSettings
from nexus_node.jobs.events import EventHub
from nexus_node.jobs.lifecycle import Lifecycle
from nexus_node.jobs.queries import Queries
from nexus_node.jobs.records import JobRecord, JobSpecRecord, ModelRecord
from nexus_node.jobs.retention import Retention
from nexus_node.llm import GeminiClient
from nexus_node.runner.pool import RunnerPool
from nexus_node.study.replicated_storage import ReplicatedStorage
from nexus_node.study.trials import TrialView
from nexus_node.work.dispatcher import Dispatcher

if TYPE_CHECKING:
    from nexus_node.jobs.registry import ReplicatedRecords

__all__ = ["JobManager", "ManagerSettings", "ChangeFeed", "RUNNING_LOST"]


class JobManager:
    """Jobs of the cluster as one node sees them (see the module docstring).

    Args:
        storage: The node's storage (study/replicated_storage.py), asked for at each use.
        clock: Wall-clock seconds, read at the edge (job and model times, the time budget);
            tests pass their own.
    """

    def __init__(
        self, *, db: "ReplicatedRecords", blobs: BlobStore, serve_pool: RunnerPool,
        storage: Callable[[], ReplicatedStorage], node_id: str, settings: ManagerSettings | None = None,
        llm: GeminiClient | None = None, llm_unavailable: str = "",
        events: EventHub | None = None, fetch_blob: Callable[[str], Awaitable[Path]] | None = None,
        replicated: Callable[[str], Awaitable[None]] | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx = JobContext(db=db, blobs=blobs, storage=storage, node_id=node_id, settings=settings, llm=llm,
                              llm_unavailable=llm_unavailable, events=events, fetch_blob=fetch_blob,
                              replicated=replicated, clock=clock)
        self.queries = Queries(self.ctx, serve_pool)
        self.lifecycle = Lifecycle(self.ctx)
        self.retention = Retention(self.ctx)

    # What the node and the servicers read.
    @property
    def storage(self) -> ReplicatedStorage:
        return self.ctx.storage

    @property
    def blobs(self) -> BlobStore:
        return self.ctx.blobs

    @property
    def events(self) -> EventHub:
        return self.ctx.events

    @property
    def changes(self) -> ChangeFeed:
        return self.ctx.changes

    @property
    def fetch_blob(self) -> Callable[[str], Awaitable[Path]]:
        return self.ctx.fetch_blob

    @property
    def active(self) -> bool:
        return self.ctx.active

    @property
    def dispatcher(self) -> Dispatcher | None:
        return self.ctx.dispatcher

    # ---- coordinating -----------------------------------------------------------------------

    async def activate(self, why: str = "node restart", term: int | None = None) -> None:
        await self.lifecycle.activate(why, term)
        self.retention.start(term)

    def job_applied(self, job: JobRecord) -> None:
        self.lifecycle.job_applied(job)
        if job.terminal and self.ctx.active:
            self.retention.poke()

    async def deactivate(self) -> None:
        await self.retention.stop()
        await self.lifecycle.deactivate()

    # ---- operations -------------------------------------------------------------------------

    async def submit(self, spec: JobSpecRecord, upload: Path, max_bytes: int | None = None,
                     limit_flag: str = "") -> JobRecord:
        return await intake.submit(self.ctx, spec, upload, max_bytes=max_bytes, limit_flag=limit_flag,
                                   check_in_runner=self.queries.check_upload)

    async def cancel(self, job_id: str, timeout: float = 60.0) -> JobRecord:
        """Commits the cancel (any node); returns once the job has ended, or after ``timeout``."""
        job = await self.get(job_id)
        if job.terminal:
            raise FailedPrecondition(f"job {job_id} already ended ({job.state}); nothing to cancel")
        await self.ctx.db.cancel_job(job_id)
        driver = self.lifecycle.driver_of(job_id)
        if driver is not None:
            await asyncio.shield(asyncio.wait({driver}, timeout=timeout))
        else:
            await self.ctx.db.wait_job(job_id, lambda j: j.terminal, timeout)
        return await self.get(job_id)

    async def delete_job(self, job_id: str, keep_models: bool = False) -> deletion.DeletedJob:
        return await deletion.delete_job(self.ctx, job_id, keep_models)

    async def delete_model(self, model_id: str) -> ModelRecord:
        return await deletion.delete_model(self.ctx, model_id)

    async def get(self, job_id: str) -> JobRecord:
        return await self.queries.get(job_id)

    async def list(self) -> list[JobRecord]:
        return await self.queries.list()

    async def trials(self, job_id: str) -> builtins.list[TrialView]:
        return await self.queries.trials(job_id)

    async def model(self, model_or_job: str) -> ModelRecord:
        return await self.queries.model(model_or_job)

    async def models(self) -> builtins.list[ModelRecord]:
        return await self.queries.models()

    def predict(
        self, model_or_job: str, csv_path: Path, max_bytes: int | None = None, limit_flag: str = ""
    ) -> AsyncIterator[tuple[builtins.list[str], builtins.list[dict[str, Any]], dict[str, Any] | None]]:
        return self.queries.predict(model_or_job, csv_path, max_bytes, limit_flag)
