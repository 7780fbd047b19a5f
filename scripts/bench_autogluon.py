"""AutoGluon's side of ``scripts/bench quality``, run by the AutoGluon venv's python
(.bench-venv/autogluon, from scripts/bench-autogluon.txt): AutoGluon pins pandas below what
Nexus uses, so it cannot share the main venv, and so this file imports nothing of the bench.

Fits ``TabularPredictor(...).fit(train, time_limit=budget, presets="medium_quality")`` on the
training file, read as FLAML's side reads it (pandas' own parsing, the dropped columns out,
the target as stripped text, rows without one dropped), predicts the test rows that have a
target and prints one JSON line: the predictions (regression values, or the classes and their
probabilities), the seconds from reading to predicting, the best model and the version.
scripts/bench.py scores the predictions, with the code that scores the other tools.

Usage: bench_autogluon.py --train F --test F --encoding E --target T [--drop a,b]
                          [--regression] --budget S --model-dir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time


def read_frame(path: str, encoding: str, target: str, drop: list[str]):
    import pandas as pd

    df = pd.read_csv(path, encoding=encoding, dtype={target: str})
    df = df.drop(columns=[c for c in drop if c in df.columns])
    df[target] = df[target].str.strip()
    return df[(df[target].notna() & (df[target] != "")).to_numpy()].reset_index(drop=True)


def fit_and_predict(a: argparse.Namespace) -> dict:
    import autogluon.tabular
    from autogluon.tabular import TabularPredictor

    t0 = time.perf_counter()
    train = read_frame(a.train, a.encoding, a.target, a.drop)
    test = read_frame(a.test, a.encoding, a.target, a.drop)
    if a.regression:
        train[a.target] = train[a.target].astype(float)
        problem, metric = "regression", "r2"
    elif train[a.target].nunique() == 2:
        problem, metric = "binary", "roc_auc"
    else:
        # The bench's multiclass score is the one-vs-rest macro AUC.
        problem, metric = "multiclass", "roc_auc_ovr_macro"
    predictor = TabularPredictor(label=a.target, problem_type=problem, eval_metric=metric, path=a.model_dir,
                                 verbosity=0)
    # As many cores as FLAML's side is given (n_jobs=cpu_count).
    predictor.fit(train, time_limit=a.budget, presets="medium_quality", num_cpus=os.cpu_count() or 1)
    features = test.drop(columns=[a.target])
    out: dict = {"version": autogluon.tabular.__version__, "best_model": predictor.model_best,
                 "models": len(predictor.model_names())}
    if a.regression:
        out["values"] = [float(v) for v in predictor.predict(features)]
    else:
        proba = predictor.predict_proba(features)
        out["classes"] = [str(c) for c in proba.columns]
        out["proba"] = proba.to_numpy(dtype=float).tolist()
    out["seconds"] = time.perf_counter() - t0
    return out


@contextlib.contextmanager
def stdout_to_stderr():
    """Whatever AutoGluon or its learners print, through Python or from C++ straight to file
    descriptor 1, goes to stderr: stdout carries the one JSON line."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--encoding", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--drop", type=lambda s: [c for c in s.split(",") if c], default=[])
    ap.add_argument("--regression", action="store_true")
    ap.add_argument("--budget", type=float, required=True)
    ap.add_argument("--model-dir", required=True, help="where AutoGluon saves its models (the caller removes it)")
    a = ap.parse_args()
    with stdout_to_stderr():
        out = fit_and_predict(a)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
