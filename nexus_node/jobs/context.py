"""What the parts of the job manager share on one node: the replicated records, the study
storage, the clock, the coordinator's term and dispatcher, and each active job's live state.

Concurrency: everything here runs on the node's event loop. Optuna storage calls, which take
locks and may wait on consensus, run in threads (``asyncio.to_thread``); those callers are
marked "(thread)".

The clock is given at construction (``clock``, wall seconds, ``time.time`` in a node) and read
at the edge (STYLE §5): the decisions it feeds, such as the search budget
(:mod:`nexus_node.jobs.budget`), take ``now`` as a parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine, Mapping, TypeVar

import optuna

from nexus_node.blobs.store import BlobStore
from nexus_node.consensus.raft import NotLeader
from nexus_node.errors import FailedPrecondition
from nexus_node.jobs import budget
from nexus_node.jobs.events import EventHub
from nexus_node.jobs.records import PENDING, PREPARING, JobRecord
from nexus_node.llm import GeminiClient
from nexus_node.study import pruning, studies
from nexus_node.study.replicated_storage import ReplicatedStorage
from nexus_node.work.dispatcher import Dispatcher, WorkSettings
from nexus_node.work.scheduler import Lease, smallest_trial_budget

if TYPE_CHECKING:
    from nexus_node.jobs.registry import ReplicatedRecords

T = TypeVar("T")

#: Why a trial left RUNNING when its job is resumed failed.
RUNNING_LOST = "the coordinator changed or restarted while the trial ran"


@dataclasses.dataclass
class ManagerSettings:
    default_max_trials: int = 20
    max_trials_limit: int = 10_000
    worker_memory_bytes: int = 8 << 30   # bounds' memory until workers report theirs (JobContext.worker_memory)
    pruner: str = pruning.DEFAULT_KIND   # the pruner kind of new jobs (nexus_node.study.pruning)
    work: WorkSettings = dataclasses.field(default_factory=WorkSettings)
    # Retention (jobs/retention.py): ended jobs kept, newest first, and for how many days; 0: all.
    keep_jobs: int = 0
    keep_days: float = 0.0
    # The most bytes of inputs in one row shard of a prepared array (pipeline/prepare.py).
    shard_bytes: int = 32 << 20


class Cancelled(Exception):
    """The job was cancelled: its driver ends it as CANCELLED."""


class ChangeFeed:
    """A version counter that coroutines can wait on: ``notify()`` bumps it, ``wait_past(v)``
    returns once it is past ``v``. WatchCluster uses it so that a watcher wakes on a change
    and reads the newest view, however many changes happened meanwhile."""

    def __init__(self) -> None:
        self.version = 0
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self.version += 1
        # Wake every waiter, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_past(self, version: int) -> int:
        while self.version <= version:
            await self._changed.wait()
        return self.version


@dataclasses.dataclass
class ActiveJob:
    """A job this coordinator drives: the live copy of its record and what stops it."""

    record: JobRecord
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)   # cancelled
    # Set when the job's running trials must stop (cancel, time budget): a trial that
    # registers after the cancels were sent still sees it.
    stop_trials: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    running: dict[int, Lease] = dataclasses.field(default_factory=dict)   # trial number -> lease
    study: optuna.Study | None = None
    driver: asyncio.Task[None] | None = None


class JobContext:
    """The state one node's job manager parts share (see the module docstring)."""

    def __init__(
        self, *, db: "ReplicatedRecords", blobs: BlobStore, storage: Callable[[], ReplicatedStorage], node_id: str,
        settings: ManagerSettings | None = None, llm: GeminiClient | None = None, llm_unavailable: str = "",
        events: EventHub | None = None, fetch_blob: Callable[[str], Awaitable[Path]] | None = None,
        replicated: Callable[[str], Awaitable[None]] | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self.db, self.blobs, self.node_id = db, blobs, node_id
        self._storage = storage
        self.settings = settings or ManagerSettings()
        # Gemini, when this node has a key; otherwise why not (each job records it).
        self.llm, self.llm_unavailable = llm, llm_unavailable or "no Gemini client on this node"
        # Published by the records when a job write is applied (on every node alike).
        self.events = events or EventHub()
        self.fetch_blob = fetch_blob or self._local_blob
        # Waits (bounded) until a new blob has its copies on other nodes: a job never depends
        # on a blob only one node holds, when the cluster has more.
        self.replicated = replicated or (lambda sha: asyncio.sleep(0))
        self.clock = clock
        self.active = False
        self.term: int | None = None   # the term this node coordinates in: fences its writes
        self.dispatcher: Dispatcher | None = None   # while coordinating
        self.changes = ChangeFeed()   # job states and busy slots, for WatchCluster
        self.jobs: dict[str, ActiveJob] = {}
        self.trial_tasks: set[asyncio.Task[None]] = set()

    @property
    def storage(self) -> ReplicatedStorage:
        """The node's storage (study/replicated_storage.py)."""
        return self._storage()

    async def _local_blob(self, sha256: str) -> Path:
        path = self.blobs.path(sha256)
        if not await asyncio.to_thread(path.is_file):
            raise FailedPrecondition(f"blob {sha256[:12]} is missing from this node's data dir")
        return path

    @property
    def dispatch(self) -> Dispatcher:
        if self.dispatcher is None:
            raise NotLeader("this node no longer coordinates")
        return self.dispatcher

    def live(self, job_id: str) -> JobRecord | None:
        active = self.jobs.get(job_id)
        return active.record if active is not None else None

    def worker_memory(self) -> int:
        """The memory the search-space bounds assume a worker has (``hard_bounds``, which
        lets one trial use a quarter of it): four times the smallest per-trial budget the
        live workers report in their heartbeats, so that every trial of the space fits on
        every node; before any has reported, this node's own free memory at start."""
        budget = smallest_trial_budget(self.dispatcher.nodes()) if self.dispatcher is not None else None
        return 4 * budget if budget is not None else self.settings.worker_memory_bytes

    def max_trials(self, job: JobRecord) -> int:
        return job.spec.max_trials or self.settings.default_max_trials

    def shard_bytes(self, job: JobRecord, files: Mapping[str, str] | None = None) -> int:
        """Bytes of the job's prepared ``files`` (default: all of them) that a task loads."""
        chosen = job.prepared.get("files", {}) if files is None else files
        return sum(self.db.blobs[sha].size for sha in chosen.values() if sha in self.db.blobs)

    @staticmethod
    def check_cancel(job: JobRecord) -> None:
        if job.cancel_requested:
            raise Cancelled()

    async def set_state(self, job: JobRecord, state: str, message: str = "") -> None:
        job.state = state
        if message:
            job.message = message
        now = self.clock()
        if state == PREPARING and not job.started_at:
            job.started_at = now
        if job.terminal:
            job.finished_at = now
        await self.db.put_job(job, term=self.term)   # every node publishes the change on apply
        self.changes.notify()

    async def study_or_none(self, job: JobRecord) -> optuna.Study | None:
        active = self.jobs.get(job.job_id)
        if active is not None and active.study is not None:
            return active.study
        if job.state in (PENDING, PREPARING) or not job.constraints:
            return None
        try:
            # Loaded, not created: a read must not append to the replicated journal.
            return await asyncio.to_thread(
                studies.load_study, self.storage, job.study_name, job.maximize, job.seed, self.max_trials(job)
            )
        except KeyError:
            return None

    async def reserve(self, job: JobRecord, memory: int, deadline_at: float = budget.NO_DEADLINE) -> Lease | None:
        """A slot for one of the job's tasks, or None once the job is stopped or its deadline
        passes."""
        stop = self.jobs[job.job_id].stop
        take = asyncio.ensure_future(self.dispatch.reserve(job.job_id, memory, job.created_at))
        stopped = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({take, stopped}, timeout=budget.timeout(deadline_at, self.clock()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if take in done and not stop.is_set() and not budget.past(deadline_at, self.clock()):
            return take.result()
        # Still waiting: cancelling reserve gives back a slot granted meanwhile. Already granted
        # (the grant and the stop came in the same turn of the loop): give the lease back here,
        # or the slot stays taken by a job that will never use it, and the next job waits for
        # ever (seen: a job submitted right after a cancel stayed PREPARING on a one-slot node).
        if take.done() and not take.cancelled() and take.exception() is None:
            self.dispatch.release(take.result())
            return None
        take.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await take
        return None

    async def unless_cancelled(self, job: JobRecord, call: Coroutine[Any, Any, T]) -> T:
        """Await an LLM call, abandoning it when the job is cancelled meanwhile: a cancel
        must not wait for Gemini's timeout."""
        stop = self.jobs[job.job_id].stop
        self.check_cancel(job)
        task = asyncio.ensure_future(call)
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()   # node shutting down: the call must not outlive the driver
            raise
        finally:
            stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
            raise Cancelled()
        return task.result()
