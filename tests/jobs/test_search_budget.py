"""The time budget ends a search, driven with a clock the test moves: no job waits out real
seconds (this replaced an end-to-end test that ran a node for an 8-second budget).

The search runs for real against a real Dispatcher and a real Optuna journal storage; the
node at the other end of the work stream is the test (plain work messages), and so is the
clock (nexus_node.jobs.budget decides from the ``now`` it reads).
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from optuna.trial import TrialState

from nexus_node.jobs.context import ActiveJob, JobContext
from nexus_node.jobs.records import FINALIZING, SEARCHING, JobRecord, JobSpecRecord
from nexus_node.jobs.search import Search
from nexus_node.study import studies
from nexus_node.study.constraints import Constraints
from nexus_node.study.replicated_storage import ReplicatedStorage
from nexus_node.work.dispatcher import Dispatcher, WorkSettings
from nexus_node.work.messages import Assignment, CancelTask, Heartbeat, TaskResult, WorkUp
from tests.consensus.machines import local_storage

STARTED, BUDGET = 1000.0, 60.0


class Records:
    """The replicated records, as far as a search writes them."""

    blobs: dict = {}

    def __init__(self) -> None:
        self.writes: list[JobRecord] = []

    async def put_job(self, job: JobRecord, **_: object) -> None:
        self.writes.append(job)


class Node:
    """The node at the other end of the work stream. Trials it is sent before ``at_deadline``
    complete at once; the one sent then moves the clock past the deadline, and it and the
    next run until the coordinator asks them to stop, then end pruned (as a runner does)."""

    def __init__(self, dispatcher: Dispatcher, storage: ReplicatedStorage, clock: list[float], at_deadline: int) -> None:
        self.d, self.storage, self.clock, self.at_deadline = dispatcher, storage, clock, at_deadline
        self.up: asyncio.Queue[WorkUp] = asyncio.Queue()
        self.assigned: list[int] = []
        self.stopped: list[str] = []
        self.running: dict[str, int] = {}   # lease -> trial id

    async def _inbound(self):
        while True:
            yield await self.up.get()

    def _answer(self, lease_id: str) -> None:
        self.up.put_nowait(WorkUp("c", "n1", result=TaskResult(lease_id, True, b"{}")))

    async def run(self) -> None:
        first = WorkUp("c", "n1", heartbeat=Heartbeat(term=1, slots=2, task_memory_bytes=1 << 30))
        async for msg in self.d.serve(first, self._inbound()):
            if isinstance(msg, Assignment):
                task = json.loads(msg.task_json)
                self.assigned.append(task["trial_number"])
                if len(self.assigned) < self.at_deadline:
                    self.storage.set_trial_state_values(task["trial_id"], TrialState.COMPLETE, [0.5])
                    self._answer(msg.lease_id)
                else:
                    self.clock[0] = STARTED + BUDGET + 0.5
                    self.running[msg.lease_id] = task["trial_id"]
            elif isinstance(msg, CancelTask):
                self.stopped.append(msg.lease_id)
                self.storage.set_trial_state_values(self.running.pop(msg.lease_id), TrialState.PRUNED, [0.1])
                self._answer(msg.lease_id)


async def test_at_the_deadline_no_trial_starts_and_the_running_ones_are_stopped():
    clock = [STARTED + 1.0]
    storage, _ = local_storage()
    job = JobRecord(job_id="job-b", spec=JobSpecRecord(target="y", max_trials=500, time_budget_seconds=BUDGET),
                    state=SEARCHING, seed=1, study_name="nexus-job-b", task="regression", metric="r2",
                    maximize=True, constraints=Constraints().to_dict(),
                    prepared={"files": {}, "search_started_at": STARTED})
    study = studies.make_study(storage, job.study_name, True, job.seed, 500)
    records = Records()
    ctx = JobContext(db=records, blobs=None, storage=lambda: storage, node_id="n1",  # type: ignore[arg-type]
                     clock=lambda: clock[0])
    ctx.active, ctx.dispatcher = True, Dispatcher(term=1, settings=WorkSettings())
    ctx.jobs[job.job_id] = ActiveJob(job, study=study)
    node = Node(ctx.dispatcher, storage, clock, at_deadline=3)
    stream = asyncio.create_task(node.run())
    try:
        await asyncio.wait_for(Search(ctx).run(job), 30)
    finally:
        await ctx.dispatcher.stop()
        stream.cancel()
        await asyncio.gather(stream, return_exceptions=True)

    assert job.state == FINALIZING and job.best_value == 0.5
    trials = study.get_trials(deepcopy=False)
    # Two completed before the deadline; the trial (and the second slot's, if it was granted
    # before the clock moved) that ran across it was asked to stop and ended pruned; none
    # was asked for after it.
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE, TrialState.COMPLETE]
    ran_across = trials[2:]
    assert len(ran_across) in (1, 2), [t.state for t in trials]
    assert len(node.stopped) == len(ran_across)
    assert all(t.state == TrialState.PRUNED for t in trials[2:])
    assert sorted(node.assigned) == [t.number for t in trials]
    assert job.trials["COMPLETE"] == 2 and job.trials["RUNNING"] == 0
    assert records.writes[-1].state == FINALIZING


def test_a_trial_is_sent_every_prepared_file_but_the_test_split_s():
    """Trials validate on the training rows: the held-out rows never travel to a trial (issue
    24), and a trial's memory estimate counts only what it loads."""
    files = {name: f"sha-{name}" for name in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test",
                                              "folds", "tree_columns", "codes_train", "codes_val", "codes_test",
                                              "codes_layout")}
    job = JobRecord(job_id="job-f", spec=JobSpecRecord(target="y"), state=SEARCHING, seed=1,
                    study_name="nexus-job-f", task="regression", metric="r2", maximize=True,
                    constraints=Constraints().to_dict(), prepared={"files": files})
    records = Records()
    records.blobs = {sha: SimpleNamespace(size=100) for sha in files.values()}
    ctx = JobContext(db=records, blobs=None, storage=lambda: None, node_id="n1")  # type: ignore[arg-type]
    sent = Search(ctx)._task(job, 0, 0, {"family": "mlp"})["files"]
    assert sent == {k: v for k, v in files.items() if k not in ("X_test", "y_test", "codes_test")}
    assert ctx.shard_bytes(job, sent) == 900 and ctx.shard_bytes(job) == 1200
