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
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")

DATA = ROOT / "nexus_node" / "data" / "insurance.csv"


def bench_overhead(n_trials: int, epochs: int) -> dict:
    import optuna
    import torch

    from nexus_node import studies
    from nexus_node.client import NexusClient
    from nexus_node.embedded import EmbeddedNode
    from nexus_node.runner.context import LocalContext
    from nexus_node.pipeline.train import DeviceData, train_and_score
    from nexus_node.runner.tasks import load_arrays, run_task
    from nexus_node.space import default_params, suggest_params

    torch.set_num_threads(1)
    seed = 11
    override = {"min_epochs": epochs, "max_epochs": epochs, "widths": [64], "batch_sizes": [32],
                "min_layers": 2, "max_layers": 2}

    # --- Nexus: one node, one slot; the search phase is timed from the job's own events.
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNode(Path(tmp) / "node", slots=1) as address:
        client = NexusClient(address)
        job = client.submit(DATA, "charges", max_trials=n_trials, seed=seed, constraints=override)
        marks: dict[str, float] = {}
        for ev in client.watch(job.job_id):
            state = ev.job.state
            name = type(ev.job).DESCRIPTOR.fields_by_name["state"].enum_type.values_by_number[state].name
            marks.setdefault(name, time.perf_counter())
        final = client.get_job(job.job_id)
        assert name == "COMPLETED", final.message
        nexus_wall = marks["FINALIZING"] - marks["SEARCHING"]
        nexus_trials = client.list_trials(job.job_id)
        constraints_json = final.constraints_json

    # --- Baseline: the same trial function in plain in-process Optuna.
    with tempfile.TemporaryDirectory() as tmp:
        prep = run_task({"task": "prepare", "csv_path": str(DATA), "target": "charges", "seed": seed,
                         "drop_columns": [], "out_dir": tmp}, LocalContext())
        arrays = DeviceData.from_arrays(load_arrays(prep["files"]), "regression", 0)
        from nexus_node.constraints import Constraints

        c = Constraints.from_dict(json.loads(constraints_json))
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
            value = r.value
            return value

        t0 = time.perf_counter()
        study.optimize(objective, n_trials=n_trials)
        base_wall = time.perf_counter() - t0

    nexus_epochs = sum(t.last_step + 1 for t in nexus_trials)
    nexus_trial_s = sum(t.duration_seconds for t in nexus_trials)
    base_trial_s = sum(t.duration.total_seconds() for t in study.trials if t.duration)
    base_epochs = sum(epochs_done)
    return {
        "trials": n_trials,
        "epochs_per_trial": epochs,
        "nexus_seconds": nexus_wall,
        "optuna_seconds": base_wall,
        "seconds_per_trial_optuna": base_wall / n_trials,
        "ratio": nexus_wall / base_wall,
        "nexus_trial_seconds": nexus_trial_s,
        "optuna_trial_seconds": base_trial_s,
        "nexus_epochs": nexus_epochs,
        "optuna_epochs": base_epochs,
        "ratio_per_epoch": (nexus_wall / max(1, nexus_epochs)) / (base_wall / max(1, base_epochs)),
        "target": 1.05,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", nargs="*", default=[], help="figures to measure: overhead (default: all)")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=40, help="epochs per trial (sets the trial length)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench.json")
    a = ap.parse_args(argv)
    unknown = set(a.which) - {"overhead"}
    if unknown:
        ap.error(f"unknown figures {sorted(unknown)}; known: overhead")
    a.which = a.which or ["overhead"]
    results: dict[str, dict] = {}
    if "overhead" in a.which:
        results["overhead"] = bench_overhead(a.trials, a.epochs)
    rows = [("figure", "value", "target")]
    if "overhead" in results:
        r = results["overhead"]
        rows += [
            ("trials", f"{r['trials']}", ""),
            ("plain Optuna s/trial", f"{r['seconds_per_trial_optuna']:.3f}", "~1"),
            ("Nexus / plain Optuna (wall)", f"{r['ratio']:.3f}", "<= 1.05"),
            ("Nexus / plain Optuna (per epoch)", f"{r['ratio_per_epoch']:.3f}", "<= 1.05"),
            ("epochs trained Nexus / Optuna", f"{r['nexus_epochs']} / {r['optuna_epochs']}", "equal"),
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
