"""A job's state machine on the coordinator: PENDING → PREPARING → SEARCHING → FINALIZING →
COMPLETED (or FAILED, CANCELLED), and resuming it under a new coordinator.

Only the coordinator (the consensus leader) drives jobs: between :meth:`Lifecycle.activate`
(it became leader) and :meth:`Lifecycle.deactivate` (it lost leadership, or stops). A job
written by any node reaches the coordinator's :meth:`Lifecycle.job_applied`, which starts it.
Each active job has one driver task. A job record is committed at every state change, so the
next coordinator (or this node after a restart) resumes from the last stage completed: an
interrupted preparation or finalisation runs again, an interrupted search continues with the
trials already in its study (:mod:`nexus_node.jobs.search`). Preparation and finalisation are
tasks run on some node (:meth:`Lifecycle._remote`); lost with their node, they run again as the
retry rule (:mod:`nexus_node.work.retries`) allows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import optuna

from nexus_node.consensus.driver import MeshStopped
from nexus_node.consensus.raft import NotLeader
from nexus_node.errors import NexusError, error_from_kind
from nexus_node.jobs import recovery
from nexus_node.jobs.context import ActiveJob, Cancelled, JobContext
from nexus_node.jobs.intake import DEFAULT_METRIC, METRICS, validate_metric
from nexus_node.jobs.library import Candidate, choose_library, max_refit_seconds
from nexus_node.jobs.records import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINALIZING,
    PENDING,
    PREPARING,
    SEARCHING,
    JobRecord,
    ModelRecord,
)
from nexus_node.jobs.search import Search
from nexus_node.llm import decide_constraints, summarize
from nexus_node.study import studies
from nexus_node.study.constraints import Constraints, apply_override, hard_bounds, parse_override
from nexus_node.study.journal import fenced_context
from nexus_node.study.space import default_configs, trial_params
from nexus_node.work.dispatcher import Dispatcher, Outcome
from nexus_node.work.retries import Loss, decide_retry
from nexus_node.work.scheduler import task_memory

log = logging.getLogger(__name__)

#: How long a new coordinator listens for the trials live nodes still run before it decides
#: which to adopt: this many heartbeats, plus a slack for the node to learn the new leader.
ADOPT_HEARTBEATS = 2
ADOPT_SLACK_S = 0.5


class Lifecycle:
    """Drives the jobs of the cluster while this node coordinates (see the module docstring)."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.search = Search(ctx)

    # ---- coordinating ---------------------------------------------------------------------

    async def activate(self, why: str = "node restart", term: int | None = None) -> None:
        """This node coordinates now (in ``term``): resume every job that is not finished.

        Everything it starts writes the study fenced to ``term`` (study/journal.py), like its
        job records: a write that would land after this node stops leading in ``term`` does
        not take effect."""
        await asyncio.create_task(self._activate(why, term), context=fenced_context(term))

    async def _activate(self, why: str, term: int | None) -> None:
        ctx = self.ctx
        ctx.active, ctx.term = True, term
        driver = ctx.db.driver
        # A task needs what this coordinator wrote for it (a trial's creation, its params):
        # its own newest write, sent to the task's node as the task is (Optuna writes are
        # private, so they may reach other nodes late).
        jobs = await ctx.db.list_jobs()
        work = ctx.settings.work
        # Trials of the searches it resumes that live nodes still run are adopted, not run
        # again: the nodes name them in the heartbeats they send once they learn the leader,
        # within about two heartbeats (work/adoption.py).
        ctx.dispatcher = Dispatcher(term or 0, work, on_change=ctx.changes.notify,
                                    applied_index=lambda: driver.last_local_index, catch_up=driver.catch_up,
                                    adopt_from=[j.study_name for j in jobs if j.state == SEARCHING and j.study_name
                                                and not j.cancel_requested],
                                    adopt_window=ADOPT_HEARTBEATS * work.heartbeat + ADOPT_SLACK_S)
        ctx.dispatcher.start()
        for job in jobs:
            if job.terminal or self._driven(job.job_id):
                continue
            if job.cancel_requested:
                study = await ctx.study_or_none(job)
                if study is not None:
                    await asyncio.to_thread(recovery.fail_running, self.ctx.storage, study, "the job was cancelled")
                await ctx.set_state(job, CANCELLED, "cancelled")
                continue
            if job.state != PENDING:
                job.message = f"resumed after {why} (was {job.state})"
            self._launch(job)

    def job_applied(self, job: JobRecord) -> None:
        """A job write was applied here (driver task; must not block). The coordinator starts
        new jobs and passes cancels on to the job's driver."""
        ctx = self.ctx
        if not ctx.active:
            return
        live = ctx.live(job.job_id)
        if live is None:
            if not job.terminal and not self._driven(job.job_id):
                self._launch(job)
            return
        if job.cancel_requested and not live.cancel_requested:
            live.cancel_requested = True
            self._stop_job(job.job_id)

    def _stop_job(self, job_id: str) -> None:
        """The job was cancelled: its tasks stop and their slots are free at once."""
        active = self.ctx.jobs[job_id]
        active.stop.set()
        active.stop_trials.set()
        if self.ctx.dispatcher is not None:
            self.ctx.dispatcher.cancel_job(job_id)

    async def deactivate(self) -> None:
        """Stop driving jobs (shutdown, or leadership lost). Jobs stay as recorded and the next
        coordinator resumes them; trials running now stay RUNNING in their study and are failed,
        with the reason, and re-run when it does. The nodes running them learn from the next
        coordinator that their leases are void and stop them."""
        ctx = self.ctx
        ctx.active, ctx.term = False, None
        tasks = [*(a.driver for a in ctx.jobs.values() if a.driver is not None), *ctx.trial_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if ctx.dispatcher is not None:
            await ctx.dispatcher.stop()
            ctx.dispatcher = None
        ctx.jobs.clear()

    def driver_of(self, job_id: str) -> "asyncio.Task[None] | None":
        active = self.ctx.jobs.get(job_id)
        return active.driver if active is not None else None

    def _driven(self, job_id: str) -> bool:
        return self.driver_of(job_id) is not None

    # ---- one job ---------------------------------------------------------------------------

    def _launch(self, job: JobRecord) -> None:
        active = ActiveJob(dataclasses.replace(job))   # the live copy this node's driver owns
        self.ctx.jobs[job.job_id] = active
        # Launched from activate, or from a write applied on the driver's task: either way
        # the job's tasks write in this coordinator's term (see activate).
        active.driver = asyncio.create_task(self._drive(active.record), name=f"job-{job.job_id}",
                                            context=fenced_context(self.ctx.term))

    async def _drive(self, job: JobRecord) -> None:
        ctx = self.ctx
        try:
            if job.state in (PENDING, PREPARING):
                await self._prepare(job)
            if job.state == SEARCHING:
                await self.search.run(job)
            if job.state == FINALIZING:
                await self._finalize(job)
        except (NotLeader, MeshStopped) as e:
            # Leadership moved (or the node stops): the next coordinator resumes the job.
            log.info("job %s: no longer driven here: %s", job.job_id, e or type(e).__name__)
        except Cancelled:
            await ctx.set_state(job, CANCELLED, "cancelled by the user")
        except NexusError as e:
            await self._end_failed(job, str(e))
        except asyncio.CancelledError:
            raise   # node shutting down: the job stays active and resumes on restart
        except Exception as e:
            log.exception("job %s failed", job.job_id)
            await self._end_failed(job, f"internal error: {type(e).__name__}: {e}")
        finally:
            active = ctx.jobs.get(job.job_id)
            if active is not None and active.record is job:
                if job.terminal:
                    del ctx.jobs[job.job_id]
                else:
                    active.driver = None   # kept: the live copy and its study, until deactivate

    async def _end_failed(self, job: JobRecord, reason: str) -> None:
        if job.cancel_requested:
            await self.ctx.set_state(job, CANCELLED, "cancelled by the user")
        else:
            await self.ctx.set_state(job, FAILED, reason)

    async def _remote(self, job: JobRecord, task: dict[str, Any], memory: int) -> dict[str, Any]:
        """Runs a job-level task (prepare, finalize) on some node; runs it again elsewhere if
        its node dies, as the retry rule allows."""
        return (await self._remote_outcome(job, task, memory)).result

    async def _remote_outcome(self, job: JobRecord, task: dict[str, Any], memory: int) -> Outcome:
        """:meth:`_remote`, with the node that ran it."""
        ctx = self.ctx
        label = task["task"]
        task = {**task, "job_id": job.job_id}   # the blobs it makes are the job's (blobs/gc.py)
        losses: list[Loss] = []
        while True:
            lease = await ctx.reserve(job, memory)
            if lease is None:
                raise Cancelled()
            outcome: Outcome = await ctx.dispatch.send(lease, task)
            if outcome.ok:
                return outcome
            ctx.check_cancel(job)
            if not outcome.lost:
                raise error_from_kind(outcome.error_kind, outcome.message)
            loss = Loss(label, outcome.handed_back)
            decision = decide_retry(loss, losses, ctx.settings.work.max_retries)
            losses.append(loss)
            if not decision.retry:
                raise NexusError(f"{label} was {decision.reason} (last: {outcome.message})")
            log.warning("job %s: %s lost (%s); running it again", job.job_id, label, outcome.message)

    async def _prepare(self, job: JobRecord) -> None:
        ctx = self.ctx
        await ctx.set_state(job, PREPARING, "profiling and preparing the data")
        result = await self._remote(job, {
            "task": "prepare", "label": f"{job.job_id}/prepare",
            "csv_sha256": job.dataset_sha256, "target": job.spec.target.strip(), "seed": job.seed,
            "drop_columns": [c.strip() for c in job.spec.drop_columns],
            # As the node read the upload at submit (a job accepted before formats were
            # recorded has none: prepare detects it).
            **({"format": dict(job.input_format)} if job.input_format else {}),
            "shard_bytes": ctx.settings.shard_bytes,
        }, task_memory("prepare", job.dataset_bytes))
        # The node that prepared holds the shards; a job never depends on one copy.
        files = {str(k): str(v) for k, v in result["files"].items()}
        # At once: a large table's arrays are many shards, each waited for at most 10 s.
        await asyncio.gather(*(ctx.replicated(sha) for sha in set(files.values())))
        ctx.check_cancel(job)
        profile = result["profile"]
        job.profile = profile
        job.encoding = result.get("encoding", job.encoding)
        job.input_format = dict(result.get("format") or job.input_format)
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
        validate_metric(job.spec, job.task)
        metric = job.spec.metric or DEFAULT_METRIC[job.task]
        job.metric, job.maximize = metric, METRICS[metric]
        memory = ctx.worker_memory()
        # Gemini's constraints (or the heuristic's, with the reason) are the base; a user's
        # override moves inside the same hard bounds over either.
        decision = await ctx.unless_cancelled(
            job, decide_constraints(ctx.llm, ctx.llm_unavailable, profile, job.spec.use_case, memory)
        )
        c = decision.constraints
        if job.spec.constraints_json:
            bounds = hard_bounds(int(profile["rows"]), int(profile.get("n_features", 0)), memory)
            c = apply_override(c, parse_override(job.spec.constraints_json), bounds, source="user")
        job.constraints, job.constraints_source = c.to_dict(), c.source
        job.constraints_model, job.constraints_fallback = decision.model, decision.fallback
        job.constraints_rationale = c.rationale
        ctx.jobs[job.job_id].study = await asyncio.to_thread(self._create_study, job, c)
        job.prepared["search_started_at"] = ctx.clock()
        # Fixed with the job (not read from the settings per trial): a node restarted with
        # another default pruner kind keeps pruning a running job's trials the same way.
        job.prepared["pruner"] = studies.pruner_spec(ctx.settings.pruner, job.constraints)
        await ctx.set_state(job, SEARCHING, f"searching: {job.task}, optimising {metric} on validation")

    def _create_study(self, job: JobRecord, c: Constraints) -> optuna.Study:
        """(thread)"""
        study = studies.make_study(self.ctx.storage, job.study_name, job.maximize, job.seed, self.ctx.max_trials(job))
        if not study.get_trials(deepcopy=False):
            # Start from a known-good configuration of each family rather than random ones.
            # No more of them than the job may run: an enqueued trial past the budget would be
            # left WAITING in the study of a finished job.
            for config in default_configs(c)[:self.ctx.max_trials(job)]:
                study.enqueue_trial(trial_params(config), skip_if_exists=True)
        return study

    async def _library(self, job: JobRecord) -> list[dict[str, Any]]:
        """The trials finalize may ensemble (jobs/library.py), as the finalize task lists
        them: their predictions as blob hashes, which the running node fetches."""
        study = await self.ctx.study_or_none(job)
        if study is None:
            return []
        trials = await asyncio.to_thread(study.get_trials, False)
        candidates = [
            Candidate(t.number, float(t.value), dict(t.user_attrs.get(studies.CONFIG_ATTR) or t.params),
                      int(t.user_attrs.get("epochs", 0) or 0), str(t.user_attrs[studies.PREDICTIONS_ATTR]),
                      t.duration.total_seconds() if t.duration is not None else 0.0)
            for t in trials
            if t.state.name == "COMPLETE" and t.value is not None and t.user_attrs.get(studies.PREDICTIONS_ATTR)]
        chosen = choose_library(candidates, job.best_trial, job.maximize, lambda sha: bool(self.ctx.db.holders(sha)))
        return [{"trial": c.number, "params": c.params, "epochs": c.epochs, "seconds": c.seconds,
                 "predictions_sha256": c.predictions} for c in chosen]

    async def _finalize(self, job: JobRecord) -> None:
        """Ensemble selection (a ``select`` task, when the library holds two trials or more),
        each chosen member's refit as a task of its own, all at once (so they spread over
        the nodes with free slots), then ``finalize`` on some node, which assembles them
        into the model (``runner/finalize.py``). A single member is fitted by ``finalize``
        itself: no file of it need travel."""
        ctx = self.ctx
        memory = task_memory("finalize", ctx.shard_bytes(job))
        base = self._finalize_request(job)
        library = await self._library(job)
        chosen: list[dict[str, Any]] | None = None
        selection = None
        if len(library) >= 2:
            picked = await self._remote(job, {
                **base, "task": "select", "label": f"{job.job_id}/select", "library": library,
                "max_refit_seconds": max_refit_seconds(job.spec.time_budget_seconds),
            }, task_memory("select", 0))
            ctx.check_cancel(job)
            chosen, selection = [dict(c) for c in picked["chosen"]], str(picked["selection"])
            if len(chosen) > 1:
                # A task group: whatever ends one refit badly (a cancel, lost leadership)
                # ends its siblings too, rather than leaving them unwatched.
                try:
                    async with asyncio.TaskGroup() as group:
                        refits = [group.create_task(self._refit(job, base, c, memory)) for c in chosen]
                except BaseExceptionGroup as failed:
                    raise failed.exceptions[0] from None   # the driver handles each kind (Cancelled...)
                chosen = [r.result() for r in refits]
                ctx.check_cancel(job)
        outcome = await self._remote_outcome(job, {
            **base, "task": "finalize", "label": f"{job.job_id}/finalize", "chosen": chosen, "selection": selection,
        }, memory)
        ctx.check_cancel(job)
        result = dict(outcome.result)
        result["members"] = [{**m, "node_id": m.get("node_id") or outcome.node_id} for m in result.get("members") or []]
        await self._record_model(job, result, str(result["artifact_sha256"]), int(result["artifact_bytes"]))

    async def _refit(self, job: JobRecord, base: dict[str, Any], chosen: dict[str, Any],
                     memory: int) -> dict[str, Any]:
        """One chosen member refitted on some node: ``chosen`` with its candidate naming the
        member's file and node, or carrying why its refit failed (finalize drops it)."""
        candidate = dict(chosen["candidate"])
        trial = candidate.get("trial")
        try:
            outcome = await self._remote_outcome(job, {
                **base, "task": "refit", "label": f"{job.job_id}/refit/{trial}", "candidate": candidate,
                "weight": chosen["weight"],
            }, memory)
        except NexusError as e:
            return {**chosen, "candidate": {**candidate, "refit_error": str(e)}}
        return {**chosen, "candidate": {**candidate, "member_sha256": outcome.result["member_sha256"],
                                        "node_id": outcome.node_id}}

    def _finalize_request(self, job: JobRecord) -> dict[str, Any]:
        """What every finalize task (select, refit, finalize) is sent."""
        return {
            "params": job.best_params, "trial": job.best_trial,
            "files": dict(job.prepared["files"]), "task_type": job.task,
            "n_classes": job.prepared.get("n_classes", 0), "metric": job.metric, "seed": job.seed,
            # Not the CSV: finalize works on the prepared arrays alone, and each node that
            # refits a member would fetch the whole table for nothing.
            "preprocessing": job.prepared["preprocessing"], "target": job.spec.target.strip(),
            "epochs_hint": job.prepared.get("best_epochs", 0),
            "meta": {"job_id": job.job_id, "target": job.spec.target, "use_case": job.spec.use_case},
        }

    async def _record_model(self, job: JobRecord, result: dict[str, Any], sha: str, size: int) -> None:
        ctx = self.ctx
        await ctx.replicated(sha)   # the node that trained it recorded its copy
        members = [dict(m) for m in result.get("members") or []]
        selection = str(result.get("selection", ""))
        # The heaviest member's configuration: the best trial's unless its refit failed.
        served = dict((members[0].get("params") if members else None) or job.best_params)
        model = ModelRecord(
            # One model per job, even if finalize runs again after a crash: the id is the job's.
            model_id="model-" + job.job_id.removeprefix("job-"), job_id=job.job_id, task=job.task,
            target=job.spec.target.strip(), input_columns=list(result.get("input_columns", [])),
            classes=[str(c) for c in result.get("classes", [])],
            test_metrics={k: float(v) for k, v in result["test_metrics"].items()},
            artifact_sha256=sha, artifact_bytes=size, created_at=ctx.clock(),
            family="ensemble" if len(members) > 1 else str(served.get("family", "mlp")),
            params=served,
            members=members, selection=selection,
        )
        await ctx.db.put_model(model, term=ctx.term)
        job.model_id = model.model_id
        job.test_metrics = model.test_metrics
        job.feature_importance = {k: float(v) for k, v in result.get("feature_importance", {}).items()}
        job.evaluated_model_rows = int(result.get("evaluated_model_rows", 0) or 0)
        job.test_rows = int(result.get("test_rows", 0) or 0)
        job.final_model_rows = int(result.get("final_model_rows", 0) or 0)
        job.members, job.model_selection = members, selection
        await ctx.db.put_job(job, term=ctx.term)   # the model is recorded before the summary is asked for
        insight = await ctx.unless_cancelled(job, summarize(
            ctx.llm, ctx.llm_unavailable, use_case=job.spec.use_case, task=job.task,
            target=job.spec.target.strip(), rows=int(job.profile.get("rows", 0)),
            test_metrics=job.test_metrics, feature_importance=job.feature_importance,
        ))
        job.summary, job.summary_source = insight.text, insight.source
        job.summary_model, job.summary_fallback = insight.model, insight.fallback
        await ctx.set_state(job, COMPLETED, "completed")
