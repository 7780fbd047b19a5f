"""Job lifecycle across the cluster: submit → prepare → search → finalize, with recovery.

The coordinator drives every job; the work itself (preparation, each trial, the final
retrain) is a task it hands to a node's runners through the :class:`~nexus_node.work.dispatcher.Dispatcher`
(any node, itself included). Concurrency: everything here runs on the node's event loop;
Optuna storage calls, which take locks and may wait on consensus, run in threads via
``asyncio.to_thread``. Each active job has one driver task; each trial in flight has one task.
A job record is committed at every state change and after every finished trial, so the next
coordinator (or this node after a restart) resumes from the last stage completed: an
interrupted search continues with the trials already in its study (the ones that were running
are failed with the reason and re-run with the same parameters), an interrupted preparation or
finalisation runs again. A task whose node dies is lost and re-run elsewhere, a bounded
number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Collection, Coroutine, TypeVar

import optuna

from nexus_node.blobs.store import BlobStore
from nexus_node.consensus.driver import MeshStopped
from nexus_node.consensus.raft import NotLeader
from nexus_node.errors import FailedPrecondition, InvalidInput, NexusError, NotFound, error_from_kind
from nexus_node.jobs.events import NEW_BEST, TRIAL_FINISHED, EventHub, TrialView
from nexus_node.jobs.records import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINALIZING,
    JOB_STUDY_PREFIX,
    PENDING,
    PREPARING,
    SEARCHING,
    JobRecord,
    JobSpecRecord,
    ModelRecord,
)
from nexus_node.llm import GeminiClient, decide_constraints, summarize
from nexus_node.pipeline.csvcheck import check_csv
from nexus_node.runner.pool import RunnerPool
from nexus_node.study import pruning, studies
from nexus_node.study.constraints import Constraints, apply_override, hard_bounds, parse_override
from nexus_node.study.space import default_configs, suggest_params, trial_params
from nexus_node.work.dispatcher import Dispatcher, Outcome, WorkSettings
from nexus_node.work.retries import Loss, decide_retry, is_handed_back
from nexus_node.work.scheduler import Lease, task_memory

if TYPE_CHECKING:
    from nexus_node.jobs.registry import ReplicatedRecords

log = logging.getLogger(__name__)
T = TypeVar("T")

METRICS = {  # name -> maximize
    "r2": True, "rmse": False, "mae": False,
    "accuracy": True, "f1": True, "roc_auc": True, "log_loss": False,
}
REGRESSION_METRICS = ("r2", "rmse", "mae")
CLASSIFICATION_METRICS = ("accuracy", "f1", "roc_auc", "log_loss")
DEFAULT_METRIC = {"regression": "r2", "binary": "roc_auc", "multiclass": "accuracy"}
#: Seeds numpy, scikit-learn and torch all accept: 0 <= seed < 2**32. A job's trials and
#: samplers derive theirs from the job's (:func:`derived_seed`), wrapping inside the range.
SEED_LIMIT = 2**32
MAX_USE_CASE_CHARS = 2_000   # the prompts use the first 1,000 (nexus_node.llm)
MAX_FILENAME_CHARS = 1_024


def _loss(t: optuna.trial.FrozenTrial) -> Loss:
    """A trial failed as lost, as the retry rule counts it."""
    return Loss(studies.config_key(t), is_handed_back(str(t.system_attrs.get(studies.FAIL_REASON, ""))))


def derived_seed(seed: int, offset: int) -> int:
    """The seed of the ``offset``-th trial (or resumed sampler) of a job seeded ``seed``."""
    return (seed + offset) % SEED_LIMIT


def metrics_for(task: str) -> tuple[str, ...]:
    return REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS


@dataclass
class ManagerSettings:
    default_max_trials: int = 20
    max_trials_limit: int = 10_000
    worker_memory_bytes: int = 8 << 30   # the smallest worker's free memory, for bounds
    pruner: str = pruning.DEFAULT_KIND   # the pruner kind of new jobs (nexus_node.study.pruning)
    work: WorkSettings = dataclasses.field(default_factory=WorkSettings)


#: Why a trial left RUNNING when its job is resumed failed.
RUNNING_LOST = "the coordinator changed or restarted while the trial ran"


class _Cancelled(Exception):
    pass


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


class JobManager:
    """Jobs of the cluster as one node sees them.

    Every node answers reads from the replicated records and commits submits and cancels
    through consensus; only the coordinator (the consensus leader) *drives* jobs: between
    :meth:`activate` (it became leader) and :meth:`deactivate` (it lost leadership, or stops).
    A job written by any node reaches the coordinator's :meth:`job_applied`, which starts it.
    """

    def __init__(
        self, *, db: "ReplicatedRecords", blobs: BlobStore, serve_pool: RunnerPool,
        storage: optuna.storages.BaseStorage, node_id: str, settings: ManagerSettings | None = None,
        llm: GeminiClient | None = None, llm_unavailable: str = "",
        events: EventHub | None = None, fetch_blob: Callable[[str], Awaitable[Path]] | None = None,
        replicated: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.db, self.blobs, self.serve_pool = db, blobs, serve_pool
        self.storage = storage
        self.node_id = node_id
        self.settings = settings or ManagerSettings()
        # Gemini, when this node has a key; otherwise why not (each job records it).
        self.llm, self.llm_unavailable = llm, llm_unavailable or "no Gemini client on this node"
        # Published by the records when a job write is applied (on every node alike).
        self.events = events or EventHub()
        self.fetch_blob = fetch_blob or self._local_blob
        # Waits (bounded) until a new blob has its copies on other nodes: a job never depends
        # on a blob only one node holds, when the cluster has more.
        self.replicated = replicated or (lambda sha: asyncio.sleep(0))
        self.active = False
        self.term: int | None = None   # the term this node coordinates in: fences its writes
        self.changes = ChangeFeed()   # job states and busy slots, for WatchCluster
        self._jobs: dict[str, JobRecord] = {}          # active jobs, the live copy
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self.dispatcher: Dispatcher | None = None   # while coordinating
        self._running: dict[str, dict[int, Lease]] = {}  # job -> trial number -> its lease
        self._stop_events: dict[str, asyncio.Event] = {}
        # Set when a job's running trials must stop (cancel, time budget): a trial that
        # registers after the cancels were sent still sees it.
        self._stop_trials: dict[str, asyncio.Event] = {}
        self._trial_tasks: set[asyncio.Task[None]] = set()
        self._studies: dict[str, optuna.Study] = {}
        self._lock = asyncio.Lock()

    # ---- lifecycle --------------------------------------------------------------------

    async def _local_blob(self, sha256: str) -> Path:
        path = self.blobs.path(sha256)
        if not path.is_file():
            raise FailedPrecondition(f"blob {sha256[:12]} is missing from this node's data dir")
        return path

    async def activate(self, why: str = "node restart", term: int | None = None) -> None:
        """This node coordinates now (in ``term``): resume every job that is not finished."""
        self.active, self.term = True, term
        driver = self.db.driver
        # A task needs what this coordinator wrote for it (a trial's creation, its params):
        # its own newest write, sent to the task's node as the task is (Optuna writes are
        # private, so they may reach other nodes late).
        self.dispatcher = Dispatcher(term or 0, self.settings.work, on_change=self.changes.notify,
                                     applied_index=lambda: driver.last_local_index,
                                     catch_up=driver.catch_up)
        self.dispatcher.start()
        for job in await self.db.list_jobs():
            if job.terminal or job.job_id in self._drivers:
                continue
            if job.cancel_requested:
                study = await self._study_or_none(job)
                if study is not None:
                    await self._fail_running(study, "the job was cancelled")
                await self._set_state(job, CANCELLED, "cancelled")
                continue
            if job.state != PENDING:
                job.message = f"resumed after {why} (was {job.state})"
            self._launch(job)


    def job_applied(self, job: JobRecord) -> None:
        """A job write was applied here (driver task; must not block). The coordinator starts
        new jobs and passes cancels on to the job's driver."""
        if not self.active:
            return
        live = self._jobs.get(job.job_id)
        if live is None:
            if not job.terminal and job.job_id not in self._drivers:
                self._launch(job)
            return
        if job.cancel_requested and not live.cancel_requested:
            live.cancel_requested = True
            self._stop_job(job.job_id)

    def _stop_job(self, job_id: str) -> None:
        """The job was cancelled: its tasks stop and their slots are free at once."""
        for events in (self._stop_events, self._stop_trials):
            if job_id in events:
                events[job_id].set()
        if self.dispatcher is not None:
            self.dispatcher.cancel_job(job_id)

    async def deactivate(self) -> None:
        """Stop driving jobs (shutdown, or leadership lost). Jobs stay as recorded and the next
        coordinator resumes them; trials running now stay RUNNING in their study and are failed,
        with the reason, and re-run when it does. The nodes running them learn from the next
        coordinator that their leases are void and stop them."""
        self.active, self.term = False, None
        tasks = [*self._drivers.values(), *self._trial_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.dispatcher is not None:
            await self.dispatcher.stop()
            self.dispatcher = None
        self._jobs.clear()
        self._drivers.clear()
        self._running.clear()
        self._stop_events.clear()
        self._stop_trials.clear()
        self._studies.clear()


    # ---- public operations ------------------------------------------------------------

    async def submit(self, spec: JobSpecRecord, upload: Path) -> JobRecord:
        """Validate the spec and upload, store the CSV, commit the job, start it.

        Raises:
            InvalidInput: nothing is stored; the message says what to fix.
        """
        self._validate_spec(spec)
        try:
            summary = await asyncio.to_thread(check_csv, upload, spec.target, spec.drop_columns)
            self._validate_metric(spec, summary.task)
        except InvalidInput:
            upload.unlink(missing_ok=True)
            raise
        sha, size = await asyncio.to_thread(self.blobs.ingest, upload)
        await self.db.put_blob(sha, size, "dataset")
        await self.replicated(sha)
        now = time.time()
        job_id = "job-" + secrets.token_hex(5)
        seed = spec.seed or secrets.randbelow(2**31 - 1) + 1
        job = JobRecord(
            job_id=job_id, spec=spec, state=PENDING, created_at=now, seed=seed,
            node_id=self.node_id, dataset_sha256=sha, dataset_bytes=size,
            encoding=summary.encoding, study_name=JOB_STUDY_PREFIX + job_id,
            message=f"{summary.target_present} rows with a target, read as {summary.encoding}",
        )
        # Committed through consensus; the coordinator (maybe this node) starts it on apply.
        await self.db.put_job(job)
        return dataclasses.replace(job)

    async def get(self, job_id: str) -> JobRecord:
        live = self._jobs.get(job_id)
        if live is not None:
            return dataclasses.replace(live)
        job = await self.db.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}: `nexus jobs` lists the jobs this cluster has")
        return job

    async def list(self) -> list[JobRecord]:
        jobs = await self.db.list_jobs()
        return [dataclasses.replace(self._jobs.get(j.job_id, j)) for j in jobs]

    async def cancel(self, job_id: str, timeout: float = 60.0) -> JobRecord:
        """Commits the cancel (any node); returns once the job has ended, or after ``timeout``."""
        job = await self.get(job_id)
        if job.terminal:
            raise FailedPrecondition(f"job {job_id} already ended ({job.state}); nothing to cancel")
        await self.db.cancel_job(job_id)
        driver = self._drivers.get(job_id)
        if driver is not None:
            await asyncio.shield(asyncio.wait({driver}, timeout=timeout))
        else:
            await self.db.wait_job(job_id, lambda j: j.terminal, timeout)
        return await self.get(job_id)

    async def trials(self, job_id: str) -> list[TrialView]:
        job = await self.get(job_id)
        study = await self._study_or_none(job)
        if study is None:
            return []
        frozen = await asyncio.to_thread(study.get_trials, False)
        return [studies.trial_view(t) for t in frozen]

    async def model(self, model_or_job: str) -> ModelRecord:
        m = await self.db.get_model(model_or_job) or await self.db.model_for_job(model_or_job)
        if m is None:
            if await self.db.get_job(model_or_job) is not None:
                job = await self.get(model_or_job)
                raise FailedPrecondition(f"job {model_or_job} has no model yet (state {job.state})")
            raise NotFound(f"no model or job {model_or_job!r}: `nexus models` lists the models")
        return m

    async def models(self) -> list[ModelRecord]:
        return await self.db.list_models()

    async def predict(self, model_or_job: str, csv_path: Path) -> AsyncIterator[tuple[list[str], list[dict[str, Any]]]]:
        """Predictions for a CSV file, as ``(classes, rows)`` batches in row order.

        The serve runner sends batches as they are ready, so the node holds one batch at a
        time, not the whole result. Raises the runner's error (e.g. InvalidInput for a
        missing column) before the first batch.
        """
        model = await self.model(model_or_job)
        artifact = await self.fetch_blob(model.artifact_sha256)
        async with self.serve_pool.acquire() as runner:
            runner.current = f"predict {model.model_id}"
            batches: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
            _, fut = await runner.call(
                {"task": "predict", "artifact_path": str(artifact), "csv_path": str(csv_path)},
                on_event=lambda ev: batches.put_nowait(ev["rows"]) if ev.get("kind") == "predictions" else None,
            )
            held: list[dict[str, Any]] | None = None
            while not (fut.done() and batches.empty()):
                getter = asyncio.ensure_future(batches.get())
                await asyncio.wait({getter, fut}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                # Hold one batch back until the result says the task succeeded: a failure
                # (bad input) must reach the caller as an error, not after partial output.
                if held is not None:
                    yield list(model.classes), held
                held = getter.result()
            result = fut.result()
            if held is not None:
                yield list(result.get("classes", model.classes)), held

    # ---- the driver ------------------------------------------------------------------

    def _validate_spec(self, spec: JobSpecRecord) -> None:
        """Checks what the spec alone decides; :meth:`_validate_metric` checks the metric
        against the uploaded target. Everything the job's stages will use is checked here
        or in :func:`check_csv`, so a job that is accepted does not fail on its input later."""
        if not spec.target.strip():
            raise InvalidInput("no target column given: set JobSpec.target (CLI: --target COL)")
        if not 0 <= spec.seed < SEED_LIMIT:
            raise InvalidInput(f"seed {spec.seed} is out of range: use 0 to {SEED_LIMIT - 1} "
                               "(0: a seed is chosen and recorded)")
        if len(spec.use_case) > MAX_USE_CASE_CHARS:
            raise InvalidInput(f"the use case is {len(spec.use_case):,} characters long; describe the goal in "
                               f"at most {MAX_USE_CASE_CHARS:,}")
        if len(spec.filename) > MAX_FILENAME_CHARS:
            raise InvalidInput(f"the file name is longer than {MAX_FILENAME_CHARS:,} characters: send a shorter one")
        if spec.max_trials < 0 or spec.max_trials > self.settings.max_trials_limit:
            raise InvalidInput(f"max_trials must be between 0 and {self.settings.max_trials_limit}")
        if not math.isfinite(spec.time_budget_seconds) or spec.time_budget_seconds < 0:
            raise InvalidInput("time_budget_seconds must be 0 (no limit) or a positive number of seconds")
        if spec.metric and spec.metric not in METRICS:
            raise InvalidInput(f"unknown metric {spec.metric!r}; choose one of {sorted(METRICS)}")
        if spec.constraints_json:
            parse_override(spec.constraints_json)

    @staticmethod
    def _validate_metric(spec: JobSpecRecord, task: str) -> None:
        """The metric must fit the task the target defines (decided at submit from the
        uploaded column as preparation decides it: :func:`nexus_node.pipeline.csvcheck.target_task`)."""
        fits = metrics_for(task)
        if spec.metric and spec.metric not in fits:
            raise InvalidInput(
                f"metric {spec.metric!r} does not fit target {spec.target.strip()!r}, which makes this a {task} "
                f"job; choose one of {list(fits)}, or no metric for the default ({DEFAULT_METRIC[task]})")

    def _launch(self, job: JobRecord) -> None:
        job = dataclasses.replace(job)   # the live copy this node's driver owns
        self._jobs[job.job_id] = job
        self._stop_events[job.job_id] = asyncio.Event()
        self._stop_trials[job.job_id] = asyncio.Event()
        self._running[job.job_id] = {}
        self._drivers[job.job_id] = asyncio.create_task(self._drive(job), name=f"job-{job.job_id}")

    async def _drive(self, job: JobRecord) -> None:
        try:
            if job.state in (PENDING, PREPARING):
                await self._prepare(job)
            if job.state == SEARCHING:
                await self._search(job)
            if job.state == FINALIZING:
                await self._finalize(job)
        except (NotLeader, MeshStopped) as e:
            # Leadership moved (or the node stops): the next coordinator resumes the job.
            log.info("job %s: no longer driven here: %s", job.job_id, e or type(e).__name__)
        except _Cancelled:
            await self._set_state(job, CANCELLED, "cancelled by the user")
        except NexusError as e:
            await self._end_failed(job, str(e))
        except asyncio.CancelledError:
            raise   # node shutting down: the job stays active and resumes on restart
        except Exception as e:
            log.exception("job %s failed", job.job_id)
            await self._end_failed(job, f"internal error: {type(e).__name__}: {e}")
        finally:
            if job.terminal:
                self._jobs.pop(job.job_id, None)
                self._stop_events.pop(job.job_id, None)
                self._running.pop(job.job_id, None)
                self._stop_trials.pop(job.job_id, None)
                self._studies.pop(job.job_id, None)
            self._drivers.pop(job.job_id, None)

    async def _end_failed(self, job: JobRecord, reason: str) -> None:
        if job.cancel_requested:
            await self._set_state(job, CANCELLED, "cancelled by the user")
        else:
            await self._set_state(job, FAILED, reason)

    def _check_cancel(self, job: JobRecord) -> None:
        if job.cancel_requested:
            raise _Cancelled()

    async def _set_state(self, job: JobRecord, state: str, message: str = "") -> None:
        job.state = state
        if message:
            job.message = message
        now = time.time()
        if state == PREPARING and not job.started_at:
            job.started_at = now
        if job.terminal:
            job.finished_at = now
        await self.db.put_job(job, term=self.term)   # every node publishes the change on apply
        self.changes.notify()

    async def _prepare(self, job: JobRecord) -> None:
        await self._set_state(job, PREPARING, "profiling and preparing the data")
        result = await self._remote(job, {
            "task": "prepare", "label": f"{job.job_id}/prepare",
            "csv_sha256": job.dataset_sha256, "target": job.spec.target.strip(), "seed": job.seed,
            "drop_columns": [c.strip() for c in job.spec.drop_columns],
        }, task_memory("prepare", job.dataset_bytes))
        # The node that prepared holds the shards; a job never depends on one copy.
        files = {str(k): str(v) for k, v in result["files"].items()}
        for sha in files.values():
            await self.replicated(sha)
        self._check_cancel(job)
        profile = result["profile"]
        job.profile = profile
        job.encoding = result.get("encoding", job.encoding)
        job.task = profile["task"]
        job.prepared = {
            "files": files,
            "preprocessing": result["preprocessing"],
            "feature_names": result.get("feature_names", []),
            "input_columns": result.get("input_columns", []),
            "split": result.get("split", {}),
            "n_classes": len(profile.get("classes") or []),
        }
        # Checked at submit already; a job accepted by an older node is checked here.
        self._validate_metric(job.spec, job.task)
        metric = job.spec.metric or DEFAULT_METRIC[job.task]
        job.metric, job.maximize = metric, METRICS[metric]
        memory = self.settings.worker_memory_bytes
        # Gemini's constraints (or the heuristic's, with the reason) are the base; a user's
        # override moves inside the same hard bounds over either.
        decision = await self._unless_cancelled(
            job, decide_constraints(self.llm, self.llm_unavailable, profile, job.spec.use_case, memory)
        )
        c = decision.constraints
        if job.spec.constraints_json:
            bounds = hard_bounds(int(profile["rows"]), int(profile.get("n_features", 0)), memory)
            c = apply_override(c, parse_override(job.spec.constraints_json), bounds, source="user")
        job.constraints, job.constraints_source = c.to_dict(), c.source
        job.constraints_model, job.constraints_fallback = decision.model, decision.fallback
        job.constraints_rationale = c.rationale
        study = await asyncio.to_thread(self._create_study, job, c)
        self._studies[job.job_id] = study
        job.prepared["search_started_at"] = time.time()
        # Fixed with the job (not read from the settings per trial): a node restarted with
        # another default pruner kind keeps pruning a running job's trials the same way.
        job.prepared["pruner"] = studies.pruner_spec(self.settings.pruner, job.constraints)
        await self._set_state(job, SEARCHING, f"searching: {job.task}, optimising {metric} on validation")

    def _create_study(self, job: JobRecord, c: Constraints) -> optuna.Study:
        study = studies.make_study(self.storage, job.study_name, job.maximize, job.seed, self._max_trials(job))
        if not study.get_trials(deepcopy=False):
            # Start from a known-good configuration of each family rather than random ones.
            for config in default_configs(c):
                study.enqueue_trial(trial_params(config), skip_if_exists=True)
        return study

    def _max_trials(self, job: JobRecord) -> int:
        return job.spec.max_trials or self.settings.default_max_trials

    async def _study_or_none(self, job: JobRecord) -> optuna.Study | None:
        if job.job_id in self._studies:
            return self._studies[job.job_id]
        if job.state in (PENDING, PREPARING) or not job.constraints:
            return None
        try:
            # Loaded, not created: a read must not append to the replicated journal.
            return await asyncio.to_thread(
                studies.load_study, self.storage, job.study_name, job.maximize, job.seed, self._max_trials(job)
            )
        except KeyError:
            return None

    async def _search(self, job: JobRecord) -> None:
        resumed = job.job_id not in self._studies   # prepared by another coordinator, or before a restart
        study = await self._study_or_none(job)
        if study is None:
            raise NexusError(f"the study of job {job.job_id} is missing from the journal")
        if resumed:
            # A sampler seeded as the job's first one would draw the first configurations again
            # (its random start-up phase ignores the study): seeded past the trials it already has.
            drawn = await asyncio.to_thread(lambda: len(study.get_trials(deepcopy=False)))
            study = await asyncio.to_thread(studies.load_study, self.storage, job.study_name, job.maximize,
                                            derived_seed(job.seed, drawn), self._max_trials(job))
        self._studies[job.job_id] = study
        # Trials left RUNNING by a previous coordinator (or this node before a restart) have
        # no lease now: failed, and re-run with the same parameters.
        await asyncio.to_thread(self._recover_running, job, study)
        c = Constraints.from_dict(job.constraints)
        started = float(job.prepared.get("search_started_at") or time.time())
        budget = job.spec.time_budget_seconds
        deadline = started + budget if budget > 0 else float("inf")
        stop = self._stop_events[job.job_id]
        inflight: set[asyncio.Task[None]] = set()
        await self._refresh_counts(job, study)
        try:
            await self._search_loop(job, study, c, deadline, stop, inflight)
        finally:
            # However the loop ended (budget, cancel, an error), no trial outlives it: each
            # stops at its next epoch and records what it reached.
            if inflight:
                self._stop_trials[job.job_id].set()
                if self.dispatcher is not None:
                    for lease in self._running.get(job.job_id, {}).values():
                        self.dispatcher.stop_task(lease.lease_id, "the job's search ended")
                await asyncio.gather(*inflight, return_exceptions=True)
        # None of this coordinator's trials runs now: a trial still RUNNING was created by a
        # deposed coordinator whose write landed late. Nobody runs it; it must not stay RUNNING.
        await self._fail_running(study, RUNNING_LOST)
        self._check_cancel(job)
        await self._refresh_counts(job, study)
        if job.best_value is None:
            reasons = [t.message for t in await self.trials(job.job_id) if t.message]
            why = f": {max(set(reasons), key=reasons.count)}" if reasons else ""
            raise NexusError(f"no trial completed{why}")
        await self._set_state(job, FINALIZING, "retraining the best configuration on train+validation")

    def _recover_running(self, job: JobRecord, study: optuna.Study, mine: Collection[int] = ()) -> None:
        """(thread) Fails the trials left RUNNING, except ``mine`` (the ones this coordinator
        asked for), as lost, and enqueues their re-runs, unless their configuration used up its
        retries (earlier losses are counted from the study)."""
        for t in study.get_trials(deepcopy=False):
            if t.state.name != "RUNNING" or t.number in mine:
                continue
            if not studies.fail_trial(study, t._trial_id, RUNNING_LOST, lost=True):
                continue
            log.info("job %s: trial %d was RUNNING with no lease of this coordinator; failed as lost",
                     job.job_id, t.number)
            self._rerun_if_allowed(job, study, t.number)

    def _rerun_if_allowed(self, job: JobRecord, study: optuna.Study, number: int) -> None:
        """(thread) Trial ``number`` was failed as lost: enqueues its re-run if the retry rule
        (:func:`~nexus_node.work.retries.decide_retry`) allows it, its losses counted from the
        study, so every coordinator counts alike."""
        trials = study.get_trials(deepcopy=False)
        t = next(x for x in trials if x.number == number)
        loss, earlier = _loss(t), [_loss(x) for x in trials if x.number < number and studies.is_lost(x)]
        decision = decide_retry(loss, earlier, self.settings.work.max_retries)
        if decision.retry:
            studies.enqueue_retry(study, t)
        else:
            log.warning("job %s: trial %d is not run again: its configuration was %s",
                        job.job_id, number, decision.reason)

    def _rerun_orphans(self, job: JobRecord, study: optuna.Study) -> None:
        """(thread, before this coordinator asks for any trial of ``job``) Enqueues the re-run
        of each trial failed as lost whose re-run was never enqueued: failing it and enqueuing
        its re-run are two writes, and the coordinator that made the first may have stopped or
        been deposed before the second. Its loss is already counted (``studies.losses``)."""
        trials = study.get_trials(deepcopy=False)
        rerun = {t.user_attrs.get(studies.RETRY_OF) for t in trials}
        for t in trials:
            if studies.is_lost(t) and t.number not in rerun:
                log.info("job %s: trial %d was lost without a re-run; deciding it now", job.job_id, t.number)
                self._rerun_if_allowed(job, study, t.number)

    async def _search_loop(
        self, job: JobRecord, study: optuna.Study, c: Constraints, deadline: float,
        stop: asyncio.Event, inflight: set[asyncio.Task[None]],
    ) -> None:
        memory = task_memory("trial", self._shard_bytes(job))
        mine: set[int] = set()   # the trials this coordinator asked for
        first = True
        while True:
            self._check_cancel(job)
            if time.time() >= deadline:
                break
            used = await asyncio.to_thread(self._budget_used, job, study, mine, first)
            first = False
            if used >= self._max_trials(job):
                if not inflight:
                    break
                # A trial in flight may yet be lost, and its re-run enqueued: wait for one to end.
                await self._wait_any(inflight, stop, deadline)
                continue
            lease = await self._reserve(job, memory, deadline)
            if lease is None:
                break
            try:
                trial, params = await asyncio.to_thread(self._ask, study, c, lease.node_id)
            except BaseException:
                self._dispatch.release(lease)
                raise
            mine.add(trial.number)
            task = asyncio.create_task(self._trial(job, study, lease, trial, params))
            inflight.add(task)
            self._trial_tasks.add(task)
            task.add_done_callback(inflight.discard)
            task.add_done_callback(self._trial_tasks.discard)
        if inflight and not stop.is_set():
            remaining = deadline - time.time()
            await asyncio.wait(set(inflight), timeout=None if remaining == float("inf") else max(0.0, remaining))
            # Past the time budget the caller stops what still runs: those trials end at
            # their next epoch, recorded as pruned with their last intermediate value.

    def _budget_used(self, job: JobRecord, study: optuna.Study, mine: Collection[int], first: bool = False) -> int:
        """(thread) Trials that use the job's budget. A RUNNING trial this coordinator did not
        ask for was created by a deposed coordinator whose write landed late (retried across
        the failover): nobody runs it, so it is failed as lost and re-run, and does not hold a
        place in the budget meanwhile."""
        self._recover_running(job, study, mine)
        if first:   # before this coordinator asks for any trial of the job
            self._rerun_orphans(job, study)
        return studies.budget_used(study.get_trials(deepcopy=False))

    @staticmethod
    async def _wait_any(tasks: set[asyncio.Task[None]], stop: asyncio.Event, deadline: float) -> None:
        stopped = asyncio.create_task(stop.wait())
        remaining = deadline - time.time()
        try:
            await asyncio.wait({*tasks, stopped}, return_when=asyncio.FIRST_COMPLETED,
                               timeout=None if remaining == float("inf") else max(0.0, remaining))
        finally:
            stopped.cancel()

    async def _fail_running(self, study: optuna.Study, reason: str) -> None:
        for t in await asyncio.to_thread(study.get_trials, False):
            if t.state.name == "RUNNING":
                await asyncio.to_thread(studies.fail_trial, study, t._trial_id, reason)

    @property
    def _dispatch(self) -> Dispatcher:
        if self.dispatcher is None:
            raise NotLeader("this node no longer coordinates")
        return self.dispatcher

    async def _reserve(self, job: JobRecord, memory: int, deadline: float = float("inf")) -> Lease | None:
        """A slot for one of the job's tasks, or None once the job is stopped or its deadline
        passes."""
        stop = self._stop_events[job.job_id]
        take = asyncio.ensure_future(self._dispatch.reserve(job.job_id, memory, job.created_at))
        stopped = asyncio.create_task(stop.wait())
        remaining = deadline - time.time()
        try:
            done, _ = await asyncio.wait(
                {take, stopped}, timeout=None if remaining == float("inf") else max(0.0, remaining),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stopped.cancel()
        if take in done and not stop.is_set() and time.time() < deadline:
            return take.result()
        # Still waiting: cancelling reserve gives back a slot granted meanwhile. Already granted
        # (the grant and the stop came in the same turn of the loop): give the lease back here,
        # or the slot stays taken by a job that will never use it, and the next job waits for
        # ever (seen: a job submitted right after a cancel stayed PREPARING on a one-slot node).
        if take.done() and not take.cancelled() and take.exception() is None:
            self._dispatch.release(take.result())
            return None
        take.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await take
        return None

    def _shard_bytes(self, job: JobRecord) -> int:
        sizes = [self.db.blobs[sha].size for sha in job.prepared.get("files", {}).values() if sha in self.db.blobs]
        return sum(sizes)

    async def _remote(self, job: JobRecord, task: dict[str, Any], memory: int) -> dict[str, Any]:
        """Runs a job-level task (prepare, finalize) on some node; runs it again elsewhere if
        its node dies, at most ``max_retries`` times."""
        label = task["task"]
        losses: list[Loss] = []
        while True:
            lease = await self._reserve(job, memory)
            if lease is None:
                raise _Cancelled()
            outcome: Outcome = await self._dispatch.send(lease, task)
            if outcome.ok:
                return outcome.result
            self._check_cancel(job)
            if not outcome.lost:
                raise error_from_kind(outcome.error_kind, outcome.message)
            loss = Loss(label, outcome.handed_back)
            decision = decide_retry(loss, losses, self.settings.work.max_retries)
            losses.append(loss)
            if not decision.retry:
                raise NexusError(f"{label} was {decision.reason} (last: {outcome.message})")
            log.warning("job %s: %s lost (%s); running it again", job.job_id, label, outcome.message)

    def _ask(self, study: optuna.Study, c: Constraints, node_id: str) -> tuple[optuna.Trial, dict[str, Any]]:
        trial = study.ask()
        params = studies.suggest_in_one_write(trial, lambda t: suggest_params(t, c),
                                              lambda p: {studies.CONFIG_ATTR: p, studies.NODE_ATTR: node_id})
        return trial, params

    async def _trial(
        self, job: JobRecord, study: optuna.Study, lease: Lease, trial: optuna.Trial, params: dict[str, Any],
    ) -> None:
        running = self._running.setdefault(job.job_id, {})
        running[trial.number] = lease
        try:
            task = {
                "task": "trial", "label": f"{job.job_id}/{trial.number}",
                "study_name": job.study_name, "trial_id": trial._trial_id,
                "trial_number": trial.number, "params": params, "files": dict(job.prepared["files"]),
                "task_type": job.task, "n_classes": job.prepared.get("n_classes", 0),
                "metric": job.metric, "maximize": job.maximize, "seed": derived_seed(job.seed, trial.number),
                "pruner": job.prepared.get("pruner") or studies.pruner_spec(self.settings.pruner, job.constraints),
            }
            if self._stop_trials[job.job_id].is_set():
                self._dispatch.release(lease)   # the job stopped between ask() and now
                outcome = Outcome(False, message="the job's search ended before the trial started")
            else:
                fut = self._dispatch.send(lease, task, config_key=studies.config_key_of(params),
                                          trial_number=trial.number)
                self.changes.notify()
                outcome = await fut
            await asyncio.to_thread(self._settle, job, study, trial, outcome)
        finally:
            running.pop(trial.number, None)
            self.changes.notify()
        await self._trial_finished(job, study, trial._trial_id)

    def _settle(self, job: JobRecord, study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> None:
        """(thread) Records what the study must know beyond what the runner told it."""
        tid = trial._trial_id
        if outcome.lost and not self._stop_trials[job.job_id].is_set():
            # Failed first, so a late result of the dead node is refused by the study; re-run
            # only if the failure is ours (the runner's own result may have landed first).
            if studies.fail_trial(study, tid, outcome.message, lost=True):
                self._rerun_if_allowed(job, study, trial.number)
        elif not outcome.ok:
            studies.fail_trial(study, tid, outcome.message or "the task failed")
        # A runner that returned without finishing the trial must not leave it RUNNING.
        studies.fail_trial(study, tid, "the runner did not record a result")

    async def _trial_finished(self, job: JobRecord, study: optuna.Study, trial_id: int) -> None:
        frozen = await asyncio.to_thread(study._storage.get_trial, trial_id)
        before = job.best_value
        await self._refresh_counts(job, study, write=False)
        view = studies.trial_view(frozen)
        kinds = [TRIAL_FINISHED]
        if job.best_trial == frozen.number and job.best_value != before:
            kinds.append(NEW_BEST)
        # The events ride on the write: every node publishes them when it applies it.
        await self.db.put_job(job, trial=view, kinds=tuple(kinds), term=self.term)

    async def _refresh_counts(self, job: JobRecord, study: optuna.Study, write: bool = True) -> None:
        trials = await asyncio.to_thread(study.get_trials, False)
        job.trials = studies.counts(trials)
        complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
        if complete:
            best = max(complete, key=lambda t: t.value) if job.maximize else min(complete, key=lambda t: t.value)
            job.best_value, job.best_trial = float(best.value), best.number
            job.best_params = dict(best.user_attrs.get(studies.CONFIG_ATTR) or best.params)
            job.prepared["best_epochs"] = int(best.user_attrs.get("epochs", 0) or 0)
        if write:
            await self.db.put_job(job, term=self.term)

    async def _finalize(self, job: JobRecord) -> None:
        result = await self._remote(job, {
            "task": "finalize", "label": f"{job.job_id}/finalize", "params": job.best_params,
            "files": dict(job.prepared["files"]), "task_type": job.task,
            "n_classes": job.prepared.get("n_classes", 0), "metric": job.metric, "seed": job.seed,
            "preprocessing": job.prepared["preprocessing"], "csv_sha256": job.dataset_sha256,
            "encoding": job.encoding, "target": job.spec.target.strip(), "drop_columns": job.spec.drop_columns,
            "split_seed": job.seed, "epochs_hint": job.prepared.get("best_epochs", 0),
            "meta": {"job_id": job.job_id, "target": job.spec.target, "use_case": job.spec.use_case},
        }, task_memory("finalize", self._shard_bytes(job)))
        self._check_cancel(job)
        await self._record_model(job, result, str(result["artifact_sha256"]), int(result["artifact_bytes"]))

    async def _record_model(self, job: JobRecord, result: dict[str, Any], sha: str, size: int) -> None:
        await self.replicated(sha)   # the node that trained it recorded its copy
        model = ModelRecord(
            # One model per job, even if finalize runs again after a crash: the id is the job's.
            model_id="model-" + job.job_id.removeprefix("job-"), job_id=job.job_id, task=job.task,
            target=job.spec.target.strip(), input_columns=list(result.get("input_columns", [])),
            classes=[str(c) for c in result.get("classes", [])],
            test_metrics={k: float(v) for k, v in result["test_metrics"].items()},
            artifact_sha256=sha, artifact_bytes=size, created_at=time.time(),
            family=str(job.best_params.get("family", "mlp")), params=job.best_params,
        )
        await self.db.put_model(model, term=self.term)
        job.model_id = model.model_id
        job.test_metrics = model.test_metrics
        job.feature_importance = {k: float(v) for k, v in result.get("feature_importance", {}).items()}
        job.evaluated_model_rows = int(result.get("evaluated_model_rows", 0) or 0)
        job.test_rows = int(result.get("test_rows", 0) or 0)
        job.final_model_rows = int(result.get("final_model_rows", 0) or 0)
        await self.db.put_job(job, term=self.term)   # the model is recorded before the summary is asked for
        insight = await self._unless_cancelled(job, summarize(
            self.llm, self.llm_unavailable, use_case=job.spec.use_case, task=job.task,
            target=job.spec.target.strip(), rows=int(job.profile.get("rows", 0)),
            test_metrics=job.test_metrics, feature_importance=job.feature_importance,
        ))
        job.summary, job.summary_source = insight.text, insight.source
        job.summary_model, job.summary_fallback = insight.model, insight.fallback
        await self._set_state(job, COMPLETED, "completed")

    async def _unless_cancelled(self, job: JobRecord, call: Coroutine[Any, Any, T]) -> T:
        """Await an LLM call, abandoning it when the job is cancelled meanwhile: a cancel
        must not wait for Gemini's timeout."""
        stop = self._stop_events[job.job_id]
        self._check_cancel(job)
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
            raise _Cancelled()
        return task.result()
