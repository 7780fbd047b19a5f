"""A deterministic in-memory :class:`~nexus_tui.client.ClusterClient` for tests and snapshots.

The data comes from a seeded generator and a fixed epoch, never the clock, so a screenshot
of the same fake is the same picture every time. Tests drive live behaviour with
:meth:`FakeClusterClient.push_cluster`, :meth:`push_event` and :meth:`go_down`.
"""

from __future__ import annotations

import csv
import json
import queue
import random
import threading
from typing import Any, Iterator

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_tui.client import Predicted, RequestFailed, Unreachable

EPOCH = 1_800_000_000.0   # the fake's "now": pass ``clock=lambda: EPOCH`` to the app
GiB = 1 << 30
_STOP = object()


def make_cluster(nodes: int, epoch: float = EPOCH) -> pb.Cluster:
    """``nodes`` nodes: the first is the coordinator, the next two voters, the rest workers."""
    infos = []
    for i in range(nodes):
        role = pb.COORDINATOR if i == 0 else pb.VOTER if i < 3 else pb.NON_VOTER
        slots = 2 + i % 3
        busy = (i * 7) % (slots + 1)
        infos.append(pb.NodeInfo(
            node_id=f"node-{i:02d}", address=f"10.0.0.{10 + i}:7070", role=role, term=4,
            last_contact=epoch - (i % 5) * 0.4, slots_total=slots, slots_busy=busy,
            memory_total_bytes=(8 + 8 * (i % 3)) * GiB, memory_free_bytes=(3 + i % 4) * GiB,
            accelerator="cpu" if i % 4 else "NVIDIA H200", version="0.1.0",
            running=[f"job-a/{i * 3 + k}" for k in range(busy)],
        ))
    return pb.Cluster(cluster_name="lab", coordinator_id="node-00", term=4, nodes=infos)


def make_trials(n: int, nodes: int = 3, seed: int = 7) -> list[pb.TrialInfo]:
    """``n`` trials of an r2-maximising search: mostly complete, some pruned, one failed."""
    rng = random.Random(seed)
    trials = []
    for i in range(n):
        state = "FAIL" if i == 3 else "PRUNED" if i % 5 == 4 else "COMPLETE"
        value = round(0.55 + 0.3 * (1 - 1 / (1 + i / 8)) + rng.uniform(-0.05, 0.05), 4)
        params = {"layers": 1 + i % 3, "width": [32, 64, 128][i % 3], "lr": round(0.001 * (1 + i % 7), 4)}
        trials.append(pb.TrialInfo(
            number=i, state=state, value=value if state != "FAIL" else 0.0,
            has_value=state != "FAIL", params_json=json.dumps(params),
            duration_seconds=round(2 + (i % 9) * 0.7, 1), node_id=f"node-{i % nodes:02d}",
            message="out of memory" if state == "FAIL" else "", last_step=10 + i % 20,
        ))
    return trials


def make_job(job_id: str, trials: list[pb.TrialInfo], state: pb.JobState = pb.COMPLETED,
             budget: int = 0, epoch: float = EPOCH) -> pb.Job:
    complete = [t for t in trials if t.state == "COMPLETE"]
    best = max(complete, key=lambda t: t.value) if complete else None
    job = pb.Job(
        job_id=job_id, state=state, task=pb.REGRESSION, metric="r2", maximize=True,
        spec=pb.JobSpec(target="charges", use_case="price health insurance",
                        max_trials=budget or len(trials), filename="insurance.csv"),
        trials=pb.TrialCounts(
            complete=len(complete), pruned=sum(t.state == "PRUNED" for t in trials),
            fail=sum(t.state == "FAIL" for t in trials),
            running=sum(t.state == "RUNNING" for t in trials)),
        best_value=best.value if best else 0.0, has_best=best is not None,
        constraints_source="heuristic",
        constraints_json=json.dumps({"max_layers": 3, "widths": [32, 64, 128], "max_epochs": 60}),
        created_at=epoch - 300, started_at=epoch - 290,
        finished_at=epoch - 10 if state == pb.COMPLETED else 0.0, node_id="node-00",
        message="completed" if state == pb.COMPLETED else "searching",
        best_params_json=best.params_json if best else "",
    )
    if state == pb.COMPLETED:
        job.model_id = f"model-{job_id}"
        job.test_metrics.update({"r2": 0.851, "rmse": 4571.2, "mae": 2533.9})
        for col, imp in (("smoker", 0.61), ("age", 0.21), ("bmi", 0.12), ("children", 0.03), ("region", 0.01)):
            job.feature_importance.add(column=col, importance=imp)
        job.summary = ("The model explains 85% of the variance in charges on held-out data. "
                       "Smoking status matters most, then age and BMI.")
    return job


class FakeClusterClient:
    """Canned cluster, jobs, trials and models; live updates pushed by the test.

    Args:
        nodes: how many nodes the cluster has.
        trials: how many trials the completed job ``job-a`` has.
        address: the address it pretends to be.
    """

    def __init__(self, nodes: int = 3, trials: int = 24, address: str = "fake:7070") -> None:
        self.address = address
        self.cluster_now = make_cluster(nodes)
        self.trials: dict[str, list[pb.TrialInfo]] = {
            "job-a": make_trials(trials, nodes), "job-b": make_trials(6, nodes, seed=3)[:5],
        }
        self.trials["job-b"].append(pb.TrialInfo(number=5, state="RUNNING", node_id="node-01",
                                                 params_json='{"layers": 2}'))
        self.jobs = {
            "job-a": make_job("job-a", self.trials["job-a"]),
            "job-b": make_job("job-b", self.trials["job-b"], state=pb.SEARCHING, budget=20),
        }
        self.models = [pb.Model(model_id="model-job-a", job_id="job-a", task=pb.REGRESSION,
                                target="charges", input_columns=["age", "sex", "bmi"],
                                family="mlp", created_at=EPOCH - 10)]
        self.submitted: list[dict[str, Any]] = []
        self._down = threading.Event()
        self._closed = threading.Event()
        self._cluster_q: queue.Queue[Any] = queue.Queue()
        self._event_qs: dict[str, list[queue.Queue[Any]]] = {}
        self._lock = threading.Lock()

    # -- test controls --------------------------------------------------------------------

    def push_cluster(self, cluster: pb.Cluster) -> None:
        self.cluster_now = cluster
        self._cluster_q.put(cluster)

    def push_event(self, event: pb.JobEvent) -> None:
        self.jobs[event.job.job_id] = event.job
        if event.HasField("trial"):
            self.trials.setdefault(event.job.job_id, []).append(event.trial)
        with self._lock:
            for q in self._event_qs.get(event.job.job_id, []):
                q.put(event)

    def go_down(self) -> None:
        """Every call and open watch fails with :class:`Unreachable` from now on."""
        self._down.set()
        self._cluster_q.put(_STOP)
        with self._lock:
            for qs in self._event_qs.values():
                for q in qs:
                    q.put(_STOP)

    # -- ClusterClient --------------------------------------------------------------------

    def _check(self) -> None:
        if self._down.is_set() or self._closed.is_set():
            raise Unreachable(f"UNAVAILABLE: {self.address} is down")

    def cluster(self) -> pb.Cluster:
        self._check()
        return self.cluster_now

    def watch_cluster(self) -> Iterator[pb.Cluster]:
        self._check()
        yield self.cluster_now
        while (item := self._cluster_q.get()) is not _STOP:
            yield item
        raise Unreachable(f"UNAVAILABLE: {self.address} went away")

    def list_jobs(self) -> list[pb.Job]:
        self._check()
        return list(self.jobs.values())

    def watch_job(self, job_id: str) -> Iterator[pb.JobEvent]:
        self._check()
        q: queue.Queue[Any] = queue.Queue()
        with self._lock:
            self._event_qs.setdefault(job_id, []).append(q)
        try:
            job = self.jobs[job_id]
            yield pb.JobEvent(kind=pb.SNAPSHOT, job=job)
            while job.state not in (pb.COMPLETED, pb.FAILED, pb.CANCELLED):
                event = q.get()
                if event is _STOP:
                    raise Unreachable(f"UNAVAILABLE: {self.address} went away")
                job = event.job
                yield event
        finally:
            with self._lock:
                self._event_qs[job_id].remove(q)

    def list_trials(self, job_id: str) -> list[pb.TrialInfo]:
        self._check()
        return list(self.trials.get(job_id, []))

    def list_models(self) -> list[pb.Model]:
        self._check()
        return list(self.models)

    def submit(self, path: str, target: str, *, use_case: str, max_trials: int,
               time_budget: float, constraints: dict[str, Any] | None) -> pb.Job:
        self._check()
        if target == "missing":
            raise RequestFailed(f"INVALID_ARGUMENT: target column {target!r} is not in the CSV")
        job_id = f"job-{len(self.jobs) + 1:02d}"
        self.submitted.append(dict(path=path, target=target, use_case=use_case,
                                   max_trials=max_trials, time_budget=time_budget,
                                   constraints=constraints))
        job = pb.Job(job_id=job_id, state=pb.PENDING, created_at=EPOCH,
                     spec=pb.JobSpec(target=target, use_case=use_case, max_trials=max_trials))
        self.jobs[job_id] = job
        return job

    def cancel(self, job_id: str) -> pb.Job:
        self._check()
        job = self.jobs[job_id]
        job.state = pb.CANCELLED
        return job

    def predict_to_csv(self, model_id: str, in_path: str, out_path: str) -> Predicted:
        self._check()
        with open(in_path, newline="") as f:
            rows = list(csv.reader(f))[1:]
        with open(out_path, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["prediction"])
            w.writerows([[f"{1000.0 + 10 * i:.1f}"] for i in range(len(rows))])
        return Predicted(len(rows))

    def close(self) -> None:
        self._closed.set()
        self.go_down()
