"""Nexus benchmarks. Each figure is a ratio against a baseline measured in the same run.

overhead: wall time of N short trials (a real training loop of about a second) through a
    Nexus node with one slot, divided by the same trial function run by plain in-process
    ``optuna.create_study().optimize()``. Both use the same data, search space, sampler
    seed, pruner and torch threads (1), so they train the same configurations. Target <= 1.05
    (Ray Tune's published overhead for 1 s trials is 1.14).

Usage: scripts/bench [overhead] [--trials N] [--epochs E] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")

DATA = ROOT / "nexus_node" / "data" / "insurance.csv"


def bench_overhead(n_trials: int, epochs: int, width: int, batch: int, rounds: int) -> dict:
    """Alternate Nexus and plain-Optuna rounds (the machine's speed drifts: interleaving
    keeps drift out of the ratio) and compare the summed search times."""
    import optuna
    import torch

    from nexus_node import studies
    from nexus_node.client import NexusClient
    from nexus_node.constraints import Constraints
    from nexus_node.pipeline.train import DeviceData, train_and_score, warm_up
    from nexus_node.runner.context import LocalContext
    from nexus_node.runner.tasks import load_arrays, run_task
    from nexus_node.space import default_params, suggest_params

    torch.set_num_threads(1)
    seed = 11
    override = {"min_epochs": epochs, "max_epochs": epochs, "widths": [width], "batch_sizes": [batch],
                "min_layers": 2, "max_layers": 2, "families": ["mlp"]}

    in_trials: list[float] = []
    base_in_trials: list[float] = []

    def nexus_round(client: NexusClient) -> tuple[float, int, str]:
        job = client.submit(DATA, "charges", max_trials=n_trials, seed=seed, constraints=override)
        marks: dict[str, float] = {}
        for ev in client.watch(job.job_id):
            name = type(ev.job).DESCRIPTOR.fields_by_name["state"].enum_type.values_by_number[ev.job.state].name
            marks.setdefault(name, time.perf_counter())
        final = client.get_job(job.job_id)
        assert final.state == 5, final.message   # COMPLETED
        trials = client.list_trials(job.job_id)
        epochs_run = sum(t.last_step + 1 for t in trials)
        in_trials.append(sum(t.duration_seconds for t in trials))
        return marks["FINALIZING"] - marks["SEARCHING"], epochs_run, final.constraints_json

    def baseline_round(arrays: DeviceData, c: Constraints) -> tuple[float, int]:
        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                               n_startup_trials=max(4, min(10, n_trials // 3))),
            pruner=studies.make_pruner(),
        )
        study.enqueue_trial(default_params(c))
        epochs_done: list[int] = []

        def objective(trial: optuna.Trial) -> float:
            params = suggest_params(trial, c)

            def report(value: float, epoch: int) -> bool:
                trial.report(value, epoch)
                return trial.should_prune()

            r = train_and_score(arrays, params, "regression", 0, "r2", seed + trial.number, 1, report=report)
            epochs_done.append(r.epochs_run)
            if r.state == "PRUNED":
                raise optuna.TrialPruned()
            if r.state == "FAIL" or r.value is None:
                raise RuntimeError(r.message)
            return float(r.value)

        t0 = time.perf_counter()
        study.optimize(objective, n_trials=n_trials)
        base_in_trials.append(sum(t.duration.total_seconds() for t in study.trials if t.duration))
        return time.perf_counter() - t0, sum(epochs_done)

    nexus_s: list[float] = []
    base_s: list[float] = []
    nexus_epochs: list[int] = []
    base_epochs: list[int] = []
    with tempfile.TemporaryDirectory() as tmp, node_process(Path(tmp) / "node", slots=1) as address:
        client = NexusClient(address)
        # Round 0 warms the node's runner and gives the constraints the job ran under.
        _, _, constraints_json = nexus_round(client)
        c = Constraints.from_dict(json.loads(constraints_json))
        prep = run_task({"task": "prepare", "csv_path": str(DATA), "target": "charges", "seed": seed,
                         "drop_columns": [], "out_dir": tmp}, LocalContext())
        arrays = DeviceData.from_arrays(load_arrays(prep["files"]), "regression", 0)
        warm_up()   # Nexus runners pay torch's first-use set-up at start; so does the baseline
        for i in range(rounds):
            order = ("nexus", "base") if i % 2 == 0 else ("base", "nexus")
            for which in order:
                if which == "nexus":
                    wall, ep, _ = nexus_round(client)
                    nexus_s.append(wall)
                    nexus_epochs.append(ep)
                else:
                    wall, ep = baseline_round(arrays, c)
                    base_s.append(wall)
                    base_epochs.append(ep)
    return {
        "trials": n_trials,
        "rounds": rounds,
        "epochs_per_trial": epochs,
        "width": width,
        "batch_size": batch,
        "nexus_seconds": nexus_s,
        "optuna_seconds": base_s,
        "seconds_per_trial_optuna": sum(base_s) / (rounds * n_trials),
        "ratio": sum(nexus_s) / sum(base_s),
        "round_ratios": [a / b for a, b in zip(nexus_s, base_s)],
        # Time inside trials (ask to tell) against the whole search: what is left is the
        # time between trials (scheduling, sampling, dispatch).
        "nexus_in_trial_seconds": in_trials[1:],
        "optuna_in_trial_seconds": base_in_trials,
        "nexus_epochs": nexus_epochs,
        "optuna_epochs": base_epochs,
        # What each reported epoch (one pruning round trip) adds, in milliseconds.
        "overhead_ms_per_epoch": 1000 * (sum(nexus_s) - sum(base_s)) / max(1, sum(base_epochs)),
        "target": 1.05,
    }


@contextlib.contextmanager
def node_process(data_dir: Path, slots: int) -> Iterator[str]:
    """A real ``nexus-node`` process on a free loopback port, as users run it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_node.node_main", "--port", str(port), "--data-dir", str(data_dir),
         "--slots", str(slots), "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "listening on" not in line:
            raise RuntimeError(f"nexus-node did not start: {line!r}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", nargs="*", default=[], help="figures to measure: overhead (default: all)")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10, help="epochs per trial (sets the trial length)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each side")
    ap.add_argument("--width", type=int, default=512, help="hidden width of the benchmark's MLP")
    ap.add_argument("--batch", type=int, default=16, help="batch size of the benchmark's MLP")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench.json")
    a = ap.parse_args(argv)
    unknown = set(a.which) - {"overhead"}
    if unknown:
        ap.error(f"unknown figures {sorted(unknown)}; known: overhead")
    a.which = a.which or ["overhead"]
    results: dict[str, dict] = {}
    if "overhead" in a.which:
        results["overhead"] = bench_overhead(a.trials, a.epochs, a.width, a.batch, a.rounds)
    rows = [("figure", "value", "target")]
    if "overhead" in results:
        r = results["overhead"]
        rows += [
            ("trials x rounds", f"{r['trials']} x {r['rounds']}", ""),
            ("plain Optuna s/trial", f"{r['seconds_per_trial_optuna']:.3f}", "~1"),
            ("Nexus / plain Optuna (search wall)", f"{r['ratio']:.3f}", "<= 1.05"),
            ("per-round ratios", " ".join(f"{x:.3f}" for x in r["round_ratios"]), ""),
            ("epochs trained Nexus / Optuna", f"{sum(r['nexus_epochs'])} / {sum(r['optuna_epochs'])}", "equal"),
            ("overhead per reported epoch (ms)", f"{r['overhead_ms_per_epoch']:.2f}", ""),
        ]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
