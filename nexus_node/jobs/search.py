"""A job's search (``SEARCHING``): trials asked for one slot at a time, within the budget.

The coordinator owns sampling: for each slot the dispatcher grants the job it calls
``study.ask()`` (so the sampler sees every result that arrived while the slot was busy) and
samples the parameters, then hands the trial to the node under the slot's lease. Each trial in
flight is one task here; its runner reports and finishes the trial through the node's
StorageService, and :meth:`Search._settle` records what the study must know beyond that (a lost
trial is failed first, then re-run as the retry rule allows). A search resumed by a new
coordinator first adopts the trials that live nodes still run for it (:meth:`Search._adopt`,
:mod:`nexus_node.work.adoption`): only the rest are failed as lost. The budget's decisions are
:mod:`nexus_node.jobs.budget`'s, given ``now`` from the context's clock; at the deadline the
running trials are asked to stop and end as pruned with their last intermediate value.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Collection, Mapping

import optuna

from nexus_node.errors import NexusError
from nexus_node.jobs import budget, recovery
from nexus_node.jobs.budget import Step
from nexus_node.jobs.context import RUNNING_LOST, JobContext
from nexus_node.jobs.events import NEW_BEST, TRIAL_FINISHED
from nexus_node.jobs.intake import derived_seed
from nexus_node.jobs.records import FINALIZING, JobRecord
from nexus_node.study import studies
from nexus_node.study.constraints import Constraints
from nexus_node.study.replicated_storage import ReplicatedStorage
from nexus_node.study.space import suggest_params
from nexus_node.work.adoption import StudyTrial, adoption
from nexus_node.work.dispatcher import Outcome
from nexus_node.work.scheduler import Lease, task_memory

log = logging.getLogger(__name__)


class Search:
    """Runs the searches of the jobs a coordinator drives (one :meth:`run` per job)."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx

    async def run(self, job: JobRecord) -> None:
        """Searches until the budget is used, then moves the job to FINALIZING.

        Raises:
            NexusError: no trial completed (the commonest reason is in the message).
            Cancelled: the job was cancelled.
        """
        try:
            await self._run(job)
        except asyncio.CancelledError:
            raise   # deposed or stopping: the next coordinator decides the claims and trials
        except BaseException:
            self._settle_claims(job)
            raise
        self._settle_claims(job)

    def _settle_claims(self, job: JobRecord) -> None:
        """Claims on the job's trials that its search left undecided are cancelled (a search
        that failed before it adopted, say): held, they would run unseen to their end."""
        if self.ctx.dispatcher is not None:
            self.ctx.dispatcher.settle_claims(job.study_name)

    async def _run(self, job: JobRecord) -> None:
        ctx = self.ctx
        active = ctx.jobs[job.job_id]
        resumed = active.study is None   # prepared by another coordinator, or before a restart
        study = await ctx.study_or_none(job)
        if study is None:
            raise NexusError(f"the study of job {job.job_id} is missing from the journal")
        if resumed:
            # A sampler seeded as the job's first one would draw the first configurations again
            # (its random start-up phase ignores the study): seeded past the trials it already has.
            drawn = len(await asyncio.to_thread(study.get_trials, deepcopy=False))
            study = await asyncio.to_thread(studies.load_study, ctx.storage, job.study_name, job.maximize,
                                            derived_seed(job.seed, drawn), ctx.max_trials(job))
        active.study = study
        inflight: set[asyncio.Task[None]] = set()
        mine: set[int] = set()   # the trials this coordinator runs
        # Trials a previous coordinator handed out that live nodes still run go on here;
        # the rest left RUNNING (a dead node's, or this node's before a restart) have no
        # lease now: failed, and re-run with the same parameters.
        for number in await self._adopt(job, study, inflight):
            mine.add(number)
        await asyncio.to_thread(recovery.recover_running, ctx.storage, study, job.job_id,
                                ctx.settings.work.max_retries, mine)
        c = Constraints.from_dict(job.constraints)
        started = float(job.prepared.get("search_started_at") or ctx.clock())
        deadline_at = budget.deadline(started, job.spec.time_budget_seconds)
        await self.refresh_counts(job, study)
        deposed = False
        try:
            await self._loop(job, study, c, deadline_at, inflight, mine)
        except asyncio.CancelledError:
            # This node stopped coordinating (or stops): its trials run on, for the next
            # coordinator to adopt. Stopping them here would waste them.
            deposed = True
            raise
        finally:
            # However else the loop ended (budget, cancel, an error), no trial outlives it:
            # each stops at its next epoch and records what it reached.
            if inflight and not deposed:
                active.stop_trials.set()
                if ctx.dispatcher is not None:
                    for lease in active.running.values():
                        ctx.dispatcher.stop_task(lease.lease_id, "the job's search ended")
                await asyncio.gather(*inflight, return_exceptions=True)
        # None of this coordinator's trials runs now: a trial still RUNNING was created by a
        # deposed coordinator whose write landed late. Nobody runs it; it must not stay RUNNING.
        await asyncio.to_thread(recovery.fail_running, ctx.storage, study, RUNNING_LOST)
        ctx.check_cancel(job)
        await self.refresh_counts(job, study)
        if job.best_value is None:
            frozen = await asyncio.to_thread(study.get_trials, False)
            reasons = [str(t.system_attrs.get(studies.FAIL_REASON, "")) for t in frozen]
            reasons = [r for r in reasons if r]
            why = f": {max(set(reasons), key=reasons.count)}" if reasons else ""
            raise NexusError(f"no trial completed{why}")
        await ctx.set_state(job, FINALIZING, "retraining the best configuration on train+validation")

    async def _adopt(self, job: JobRecord, study: optuna.Study, inflight: set[asyncio.Task[None]]) -> list[int]:
        """Adopts the job's trials that live nodes still run for an earlier coordinator, each
        as a task in ``inflight``; returns their numbers. Waits for the dispatcher's adoption
        window only when the study has a RUNNING trial."""
        ctx = self.ctx
        dispatcher = ctx.dispatcher
        if dispatcher is None:
            return []

        def running_trials() -> dict[int, optuna.trial.FrozenTrial]:
            return {t.number: t for t in study.get_trials(deepcopy=False)}

        if not any(t.state.name == "RUNNING" for t in (await asyncio.to_thread(running_trials)).values()):
            return []
        claims = await dispatcher.claims_for(job.study_name)
        frozen = await asyncio.to_thread(running_trials)   # as it stands after the window
        trials = {n: StudyTrial(n, t.state.name == "RUNNING", str(t.user_attrs.get(studies.NODE_ATTR, "")))
                  for n, t in frozen.items()}
        decision = adoption(claims, trials, dispatcher.now(), ctx.settings.work.grace)
        memory = task_memory("trial", ctx.shard_bytes(job, trial_files(job.prepared.get("files", {}))))
        ids = {n: await asyncio.to_thread(studies.trial_id_of, ctx.storage, job.study_name, n) for n in decision.adopt}
        # Taken over here, before anything else runs on the loop: a claim still held when
        # the claims are settled is cancelled on its node.
        for number, claim in decision.adopt.items():
            params = studies.config_of(frozen[number])
            lease, fut = dispatcher.adopt(claim, job.job_id, memory, self._task(job, number, ids[number], params),
                                          studies.config_key_of(params))
            running = asyncio.create_task(self._trial(job, study, lease, number, ids[number], params, adopted=fut))
            inflight.add(running)
            ctx.trial_tasks.add(running)
            running.add_done_callback(inflight.discard)
            running.add_done_callback(ctx.trial_tasks.discard)
        if decision.adopt:
            log.info("job %s: adopted trials %s, still running on their nodes", job.job_id,
                     ", ".join(f"{n} on {c.node_id}" for n, c in sorted(decision.adopt.items())))
        dispatcher.settle_claims(job.study_name, decision.refuse)
        return sorted(decision.adopt)

    async def _loop(self, job: JobRecord, study: optuna.Study, c: Constraints, deadline_at: float,
                    inflight: set[asyncio.Task[None]], mine: set[int]) -> None:
        ctx = self.ctx
        active = ctx.jobs[job.job_id]
        memory = task_memory("trial", ctx.shard_bytes(job, trial_files(job.prepared.get("files", {}))))
        first = True
        while True:
            ctx.check_cancel(job)
            if budget.past(deadline_at, ctx.clock()):
                break
            used = await asyncio.to_thread(self._budget_used, job, study, mine, first)
            first = False
            step = budget.next_step(now=ctx.clock(), deadline_at=deadline_at, used=used,
                                    max_trials=ctx.max_trials(job), in_flight=len(inflight))
            if step is Step.END:
                break
            if step is Step.WAIT:
                # A trial in flight may yet be lost, and its re-run enqueued: wait for one to end.
                await self._wait_any(inflight, active.stop, deadline_at)
                continue
            lease = await ctx.reserve(job, memory, deadline_at)
            if lease is None:
                break
            try:
                trial, trial_id, params = await asyncio.to_thread(self._ask, ctx.storage, study, c, lease.node_id,
                                                                  ctx.term)
            except BaseException:
                ctx.dispatch.release(lease)
                raise
            mine.add(trial.number)
            task = asyncio.create_task(self._trial(job, study, lease, trial.number, trial_id, params))
            inflight.add(task)
            ctx.trial_tasks.add(task)
            task.add_done_callback(inflight.discard)
            task.add_done_callback(ctx.trial_tasks.discard)
        if inflight and not active.stop.is_set():
            await asyncio.wait(set(inflight), timeout=budget.timeout(deadline_at, ctx.clock()))
            # Past the time budget the caller stops what still runs: those trials end at
            # their next epoch, recorded as pruned with their last intermediate value.

    def _budget_used(self, job: JobRecord, study: optuna.Study, mine: Collection[int], first: bool = False) -> int:
        """(thread) Trials that use the job's budget. A RUNNING trial this coordinator neither
        asked for nor adopted was created by an earlier coordinator that was deposed before it
        handed the trial out (asking is two writes, and the second is fenced to its term, as
        every write of a coordinator is): nobody runs it, so it is failed as lost and re-run,
        and does not hold a place in the budget meanwhile."""
        max_retries = self.ctx.settings.work.max_retries
        recovery.recover_running(self.ctx.storage, study, job.job_id, max_retries, mine)
        if first:   # before this coordinator asks for any trial of the job
            # Not its adopted trials': one lost meanwhile is re-run by its own settling.
            recovery.rerun_orphans(study, job.job_id, max_retries, skip=mine)
        return studies.budget_used(study.get_trials(deepcopy=False))

    async def _wait_any(self, tasks: set[asyncio.Task[None]], stop: asyncio.Event, deadline_at: float) -> None:
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({*tasks, stopped}, return_when=asyncio.FIRST_COMPLETED,
                               timeout=budget.timeout(deadline_at, self.ctx.clock()))
        finally:
            stopped.cancel()

    @staticmethod
    def _ask(storage: ReplicatedStorage, study: optuna.Study, c: Constraints,
             node_id: str, term: int | None = None) -> tuple[optuna.Trial, int, dict[str, Any]]:
        """(thread) A new trial (an enqueued re-run first), its id in the storage and its
        parameters, written in one append, with the term of the coordinator that asked."""
        trial = study.ask()
        params = studies.suggest_in_one_write(
            storage, trial, lambda t: suggest_params(t, c),
            lambda p: {studies.CONFIG_ATTR: p, **({studies.TERM_ATTR: term} if term is not None else {}),
                       studies.NODE_ATTR: node_id})
        return trial, studies.trial_id_of(storage, study.study_name, trial.number), params

    def _task(self, job: JobRecord, number: int, trial_id: int, params: dict[str, Any]) -> dict[str, Any]:
        """The runner's request for trial ``number``."""
        return {
            "task": "trial", "label": f"{job.job_id}/{number}", "job_id": job.job_id,
            "study_name": job.study_name, "trial_id": trial_id,
            "trial_number": number, "params": params, "files": trial_files(job.prepared["files"]),
            "task_type": job.task, "n_classes": job.prepared.get("n_classes", 0),
            "metric": job.metric, "maximize": job.maximize, "seed": derived_seed(job.seed, number),
            "pruner": job.prepared.get("pruner") or studies.pruner_spec(self.ctx.settings.pruner, job.constraints),
        }

    async def _trial(self, job: JobRecord, study: optuna.Study, lease: Lease, number: int,
                     trial_id: int, params: dict[str, Any], adopted: asyncio.Future[Outcome] | None = None) -> None:
        """Runs trial ``number`` under ``lease`` to its outcome; ``adopted``: the outcome of
        the trial its node already runs, taken over from an earlier coordinator."""
        ctx = self.ctx
        active = ctx.jobs[job.job_id]
        active.running[number] = lease
        try:
            if adopted is not None:
                ctx.changes.notify()
                outcome = await adopted
            elif active.stop_trials.is_set():
                ctx.dispatch.release(lease)   # the job stopped between ask() and now
                outcome = Outcome(False, message="the job's search ended before the trial started")
            else:
                params_key = studies.config_key_of(params)
                fut = ctx.dispatch.send(lease, self._task(job, number, trial_id, params), config_key=params_key,
                                        trial_number=number)
                ctx.changes.notify()
                outcome = await fut
            await asyncio.to_thread(self._settle, job, study, number, trial_id, outcome,
                                    active.stop_trials.is_set())
        finally:
            active.running.pop(number, None)
            ctx.changes.notify()
        await self._trial_finished(job, study, trial_id)

    def _settle(self, job: JobRecord, study: optuna.Study, number: int, tid: int, outcome: Outcome,
                stopped: bool) -> None:
        """(thread) Records what the study must know beyond what the runner told it."""
        storage = self.ctx.storage
        if outcome.lost and not stopped:
            # Failed first, so a late result of the dead node is refused by the study; re-run
            # only if the failure is ours (the runner's own result may have landed first).
            if studies.fail_trial(storage, tid, outcome.message, lost=True, handed_back=outcome.handed_back):
                recovery.rerun_if_allowed(study, job.job_id, number, self.ctx.settings.work.max_retries)
        elif not outcome.ok:
            studies.fail_trial(storage, tid, outcome.message or "the task failed")
        # A runner that returned without finishing the trial must not leave it RUNNING.
        studies.fail_trial(storage, tid, "the runner did not record a result")

    async def _trial_finished(self, job: JobRecord, study: optuna.Study, trial_id: int) -> None:
        frozen = await asyncio.to_thread(self.ctx.storage.get_trial, trial_id)
        before = job.best_value
        await self.refresh_counts(job, study, write=False)
        view = studies.trial_view(frozen)
        kinds = [TRIAL_FINISHED]
        if job.best_trial == frozen.number and job.best_value != before:
            kinds.append(NEW_BEST)
        # The events ride on the write: every node publishes them when it applies it.
        await self.ctx.db.put_job(job, trial=view, kinds=tuple(kinds), term=self.ctx.term)

    async def refresh_counts(self, job: JobRecord, study: optuna.Study, write: bool = True) -> None:
        trials = await asyncio.to_thread(study.get_trials, False)
        job.trials = studies.counts(trials)
        complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
        if complete:
            best = max(complete, key=_value) if job.maximize else min(complete, key=_value)
            job.best_value, job.best_trial = float(_value(best)), best.number
            job.best_params = dict(best.user_attrs.get(studies.CONFIG_ATTR) or best.params)
            job.prepared["best_epochs"] = int(best.user_attrs.get("epochs", 0) or 0)
        if write:
            await self.ctx.db.put_job(job, term=self.ctx.term)


def trial_files(files: Mapping[str, str]) -> dict[str, str]:
    """The prepared files a trial reads: all but the test split's (prepare names them
    ``X_test``, ``y_test``, ``codes_test``, with ``#k`` for their row shards). Trials validate on the training rows alone; the
    held-out rows are read only by finalize, so a worker never fetches them for a trial."""
    return {name: sha for name, sha in files.items() if not name.partition("#")[0].endswith("_test")}


def _value(t: optuna.trial.FrozenTrial) -> float:
    """A complete trial's objective value (``refresh_counts`` keeps only trials that have one)."""
    assert t.value is not None
    return t.value
