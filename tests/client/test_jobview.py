"""The columns and leaderboard sections of ``nexus show``."""

from __future__ import annotations

import json

from nexus_client import cli, jobview
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb

PROFILE = {
    "rows": 1981, "n_features": 230, "encoding": "cp1252",
    "columns": [
        {"name": "rownames", "kind": "dropped", "reason": "row number: unique, ordered integers"},
        {"name": "startdate", "kind": "numeric", "date_format": "%Y-%m-%d"},
        {"name": "samplesize", "kind": "numeric"},
        {"name": "pollster", "kind": "categorical", "n_unique": 35},
        {"name": "multiversions", "kind": "dropped", "reason": "empty: no values"},
    ],
}


def _trial(number, value, family, state="COMPLETE", **params):
    return pb.TrialInfo(number=number, state=state, value=value, has_value=state == "COMPLETE",
                        params_json=json.dumps({"family": family, **params}), last_step=9, duration_seconds=2.0)


def test_columns_section_names_kinds_dates_and_drop_reasons():
    lines = jobview.format_columns(PROFILE)
    assert lines[0] == "columns      3 used, 2 dropped, 230 encoded features, read as cp1252"
    assert "  numeric     startdate (date %Y-%m-%d), samplesize" in lines
    assert "  categorical pollster (35 values)" in lines
    assert "  dropped     rownames       row number: unique, ordered integers" in lines
    assert "  dropped     multiversions  empty: no values" in lines
    assert jobview.format_columns({"rows": 3}) == []
    # A job prepared since the format is recorded says how its upload was read.
    euro = jobview.format_columns({**PROFILE, "format": "cp1252 CSV, semicolon-separated, decimal comma"})
    assert euro[0].endswith("read as cp1252 CSV, semicolon-separated, decimal comma")


def test_leaderboard_keeps_the_best_completed_trials_per_family_in_the_study_direction():
    trials = [_trial(0, 0.80, "mlp"), _trial(1, 0.85, "gbt", learning_rate=0.1), _trial(2, 0.90, "mlp"),
              _trial(3, 0.99, "gbt", state="PRUNED"), _trial(4, 0.70, "mlp"), _trial(5, 0.60, "mlp"),
              _trial(6, 0.84, "gbt")]
    board = jobview.leaderboard(trials, maximize=True)
    assert list(board) == ["mlp", "gbt"]
    assert [r["number"] for r in board["mlp"]] == [2, 0, 4]
    assert [r["number"] for r in board["gbt"]] == [1, 6]
    low = jobview.leaderboard(trials, maximize=False)
    assert list(low) == ["mlp", "gbt"] and [r["number"] for r in low["mlp"]] == [5, 4, 0]


def test_show_prints_both_sections():
    job = pb.Job(job_id="j1", state=pb.COMPLETED, metric="r2", maximize=True, profile_json=json.dumps(PROFILE))
    out = cli.format_job(job, unicode=False, trials=[_trial(0, 0.8, "mlp", width=64), _trial(1, 0.85, "gbt")])
    assert "columns      3 used, 2 dropped" in out
    board = out.split("leaderboard  best trials per family (r2, validation split)\n")[1].splitlines()
    assert board[0].split()[:3] == ["gbt", "#1", "0.85"] and board[1].split()[:3] == ["mlp", "#0", "0.8"]
    assert "width=64" in board[1]
