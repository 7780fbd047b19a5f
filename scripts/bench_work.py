"""Distributed-trial benchmarks on real node processes (loopback); each figure against a baseline
of the same run.

scale: trials per minute of one job on a 2-node cluster over the same job on a 1-node cluster,
    one slot of one thread per node, short MLP trials of one architecture and 40 epochs, no
    pruning; a trial that stopped early (no better score for 10 epochs) counts as the share of
    the 40 epochs it ran, so both clusters are credited for the same work (raw trials/min are
    in the JSON too); measured from the job's first trial start to its last trial end (taken
    from the study), over jobs of 32 trials. Interleaved rounds (ABBA order), after a warm-up
    job of the same size on each cluster (the first job on a fresh cluster ran up to a third slower:
    runners starting, caches filling). Target >= 1.85 (on this 2-core machine the two nodes'
    trials share the cores with the nodes themselves). Beside it: the steady ratio, which
    leaves out the job's tail (the last trial running while the other slot has nothing left:
    half a trial on average, a cost of the job's size rather than of the cluster's rate), and
    the tails.

rerun: a 3-node cluster with --grace G and two slots per node runs 3 long trials, one per node;
    a worker running one is killed with SIGKILL; the figure is the time from the kill to the
    start of its re-run on another node (the retry's start, read from the study). Target
    <= grace + 1 s. Repeated --rounds times (the killed node restarts between rounds).

rss: peak resident memory of one node plus its runner processes (summed, sampled every 50 ms
    from /proc) while it tunes ../shared/datasets/fertility.csv (254k rows). Target <= 512 MB
    for a node started as on a 512 MB machine (--memory-mb 512: one slot, one library family
    per runner); the same job on a node left to size itself on this machine is reported
    beside it (its runner holds torch, pandas and scikit-learn at once), with both jobs'
    seconds and test scores.

Usage: scripts/bench scale|rerun|rss [--rounds R] [--trials N] [--grace G]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import optuna  # noqa: E402
from bench_mesh import cluster, report, stub  # noqa: E402
from optuna.storages import GrpcStorageProxy  # noqa: E402

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb  # noqa: E402
from nexus_node.study import studies  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
DATASETS = ROOT.parent / "shared" / "datasets"
TERMINAL = (pb.COMPLETED, pb.FAILED, pb.CANCELLED)


def submit(address: str, csv: Path, target: str, **spec) -> str:
    data = csv.read_bytes()

    def requests():
        yield pb.SubmitJobRequest(spec=pb.JobSpec(target=target, use_case="benchmark", **spec))
        for i in range(0, len(data), 1 << 20):
            yield pb.SubmitJobRequest(chunk=data[i:i + (1 << 20)])

    return stub(address).SubmitJob(requests(), timeout=120).job_id


def wait_end(address: str, job_id: str, timeout: float = 900) -> pb.Job:
    for ev in stub(address).WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=timeout):
        if ev.job.state in TERMINAL:
            if ev.job.state != pb.COMPLETED:
                raise RuntimeError(f"job {job_id} ended {pb.JobState.Name(ev.job.state)}: {ev.job.message}")
            return ev.job
    raise RuntimeError("job stream ended")


def study_trials(address: str, job: pb.Job) -> list[optuna.trial.FrozenTrial]:
    host, port = address.rsplit(":", 1)
    storage = GrpcStorageProxy(host=host, port=int(port))
    return optuna.load_study(study_name=job.study_name, storage=storage).get_trials(deepcopy=False)


# Identical trials: one architecture, fixed epochs, no pruning (the nodes run --pruner none).
EPOCHS = 40
SAME_TRIALS = json.dumps({"families": ["mlp"], "widths": [64], "min_layers": 2, "max_layers": 2,
                          "batch_sizes": [64], "min_epochs": EPOCHS, "max_epochs": EPOCHS})


def _trials_per_minute(address: str, n_trials: int, seed: int) -> tuple[float, float, float, float]:
    """``(trials/min counting each trial as the share of its epochs it ran, plain trials/min,
    steady trials/min, tail seconds)`` of one job; see :func:`_rates`."""
    job = wait_end(address, submit(address, DATASETS / "insurance.csv", "charges", max_trials=n_trials,
                                   seed=seed, constraints_json=SAME_TRIALS))
    return _rates([t for t in study_trials(address, job) if t.datetime_start and t.datetime_complete])


def _rates(trials: list[optuna.trial.FrozenTrial]) -> tuple[float, float, float, float]:
    """Early stopping (10 epochs without a better score) ends some trials before their 40
    epochs, and parallel slots draw other configurations than one slot does: each trial
    counts as the share of the 40 epochs it ran, so both clusters are credited for the same
    work. The whole job runs from its first trial's start to its last trial's end. Its end
    includes the tail: once the last trial has started, a slot that finishes first has nothing
    left to run. The steady rate leaves the tail out: it counts the work done (each trial's
    share, spread evenly over its run) while every slot still had trials to run, i.e. until
    the first slot ran out."""
    def work(t: optuna.trial.FrozenTrial) -> float:
        return (max(t.intermediate_values) + 1) / EPOCHS if t.intermediate_values else 1.0

    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    last_by_slot: dict[str, datetime.datetime] = {}
    for t in trials:   # each node has one slot (bench_mesh.Node starts them with --slots 1)
        slot = t.user_attrs.get(studies.NODE_ATTR)
        if slot:
            last_by_slot[slot] = max(last_by_slot.get(slot, t.datetime_complete), t.datetime_complete)
    steady_end = min(last_by_slot.values())
    steady = 0.0
    for t in trials:
        run = (t.datetime_complete - t.datetime_start).total_seconds()
        inside = (min(t.datetime_complete, steady_end) - t.datetime_start).total_seconds()
        steady += work(t) * (max(0.0, inside) / run if run > 0 else 1.0)
    span = (end - start).total_seconds()
    return (60.0 * sum(work(t) for t in trials) / span, 60.0 * len(trials) / span,
            60.0 * steady / (steady_end - start).total_seconds(), (end - steady_end).total_seconds())


def bench_scale(n_trials: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        one = cluster(Path(tmp) / "one", 1, "--pruner", "none")
        two = cluster(Path(tmp) / "two", 2, "--pruner", "none")
        try:
            for c in (one, two):   # warm-up, a whole job each: runners started, caches filled
                _trials_per_minute(c[0].address, n_trials, seed=1)
            single_runs, pair_runs = [], []
            for r in range(rounds):
                # Interleaved, in ABBA order: the machine's speed drifts by up to a third
                # within minutes, and a fixed order would credit the drift to one side.
                for c, runs in ((one, single_runs), (two, pair_runs))[::1 if r % 2 == 0 else -1]:
                    runs.append(_trials_per_minute(c[0].address, n_trials, seed=10 + r))
        finally:
            for n in one + two:
                n.stop()

    def ratio(i: int) -> float:
        return sum(x[i] for x in pair_runs) / sum(x[i] for x in single_runs)

    return {"trials_per_job": n_trials, "rounds": rounds, "target": 1.85, "ratio": ratio(0),
            "one_node_trials_per_min": [x[0] for x in single_runs],
            "two_nodes_trials_per_min": [x[0] for x in pair_runs],
            "raw_one_node_trials_per_min": [x[1] for x in single_runs],
            "raw_two_nodes_trials_per_min": [x[1] for x in pair_runs], "raw_ratio": ratio(1),
            "steady_one_node_trials_per_min": [x[2] for x in single_runs],
            "steady_two_nodes_trials_per_min": [x[2] for x in pair_runs], "steady_ratio": ratio(2),
            "two_nodes_tail_seconds": [x[3] for x in pair_runs]}


def bench_rerun(rounds: int, grace: float) -> dict:
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        nodes = cluster(Path(tmp), 3, "--slots", "2", "--grace", str(grace), "--pruner", "none")
        try:
            for r in range(rounds):
                view = stub(nodes[0].address).GetCluster(pb.GetClusterRequest())
                lead = next(n for n in nodes if n.address == next(
                    x.address for x in view.nodes if x.role == pb.COORDINATOR))
                job_id = submit(lead.address, DATASETS / "insurance.csv", "charges", max_trials=3, seed=20 + r,
                                constraints_json=json.dumps({"families": ["mlp"], "min_epochs": 300,
                                                             "max_epochs": 300, "widths": [128]}))
                victim_info = None
                for v in stub(lead.address).WatchCluster(pb.WatchClusterRequest(), timeout=300):
                    busy = [n for n in v.nodes if n.role != pb.COORDINATOR and
                            any(x.startswith(job_id + "/") and not x.endswith(("prepare", "finalize"))
                                for x in n.running)]
                    if busy:
                        victim_info = busy[0]
                        break
                victim = next(n for n in nodes if n.address == victim_info.address)
                killed = time.time()
                victim.kill()
                job = wait_end(lead.address, job_id)
                trials = study_trials(lead.address, job)
                retry = next(t for t in trials if "retry_of" in t.user_attrs)
                seconds.append(retry.datetime_start.timestamp() - killed)
                victim.start()
        finally:
            for n in nodes:
                n.stop()
    return {"grace_s": grace, "rounds": rounds, "seconds": seconds, "median_s": statistics.median(seconds),
            "max_s": max(seconds), "target_s": grace + 1.0}


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def _peak_rss(n_trials: int, *flags: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        node = cluster(Path(tmp), 1, *(flags or ("--slots", "1")))[0]
        peak, samples, done = [0], [0], threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], _tree_rss(node.proc.pid))
                samples[0] += 1

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        try:
            started = time.perf_counter()
            job = wait_end(node.address, submit(node.address, DATASETS / "fertility.csv", "morekids",
                                                max_trials=n_trials, seed=3))
            seconds = time.perf_counter() - started
        finally:
            done.set()
            watcher.join()
            node.stop()
    return {"flags": list(flags), "job_seconds": seconds, "samples": samples[0],
            "peak_rss_mb": peak[0] / (1 << 20), "test_metrics": dict(job.test_metrics)}


def bench_rss(n_trials: int) -> dict:
    small = _peak_rss(n_trials, "--memory-mb", "512")
    sized = _peak_rss(n_trials)
    return {"dataset": "fertility.csv", "trials": n_trials, "memory_512": small, "self_sized_one_slot": sized,
            "peak_rss_mb": small["peak_rss_mb"], "target_mb": 512}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", nargs="+", choices=("scale", "rerun", "rss"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trials", type=int, help="trials per job (default: scale 32, rerun 3, rss 8)")
    ap.add_argument("--grace", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "work.json")
    a = ap.parse_args(argv)
    results: dict[str, dict] = {}
    rows = [("figure", "value", "target")]
    if "scale" in a.which:
        r = results["scale"] = bench_scale(a.trials or 32, a.rounds)
        rows += [("trials/min, 2 nodes / 1 node", f"{r['ratio']:.2f}", ">= 1.85"),
                 ("  1 node trials/min", " ".join(f"{x:.1f}" for x in r["one_node_trials_per_min"]), ""),
                 ("  2 nodes trials/min", " ".join(f"{x:.1f}" for x in r["two_nodes_trials_per_min"]), ""),
                 ("  plain trials/min ratio (early-stopped trials count as whole)", f"{r['raw_ratio']:.2f}", ""),
                 ("  steady ratio (while both slots had trials to run)", f"{r['steady_ratio']:.2f}", ""),
                 ("  2 nodes: tail, one slot idle at the job's end, s",
                  " ".join(f"{x:.2f}" for x in r["two_nodes_tail_seconds"]), "")]
    if "rerun" in a.which:
        r = results["rerun"] = bench_rerun(a.rounds, a.grace)
        rows += [(f"kill -9 worker -> trial re-run elsewhere, median s (grace {a.grace:g})",
                  f"{r['median_s']:.2f}", f"<= {a.grace + 1:g}"),
                 ("  each", " ".join(f"{x:.2f}" for x in r["seconds"]), "")]
    if "rss" in a.which:
        r = results["rss"] = bench_rss(min(a.trials or 8, 8))
        small, sized = r["memory_512"], r["self_sized_one_slot"]
        rows += [("peak RSS node + runners, fertility.csv, --memory-mb 512, MB", f"{r['peak_rss_mb']:.0f}", "<= 512"),
                 ("  job seconds / test roc_auc", f"{small['job_seconds']:.0f} / {small['test_metrics'].get('roc_auc', 0):.4f}", ""),
                 ("  same job, node sized for this machine (--slots 1), MB", f"{sized['peak_rss_mb']:.0f}", ""),
                 ("  job seconds / test roc_auc", f"{sized['job_seconds']:.0f} / {sized['test_metrics'].get('roc_auc', 0):.4f}", ""),
                 ("  trials per job", str(r["trials"]), "")]
    report(rows, results, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
