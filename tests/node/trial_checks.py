"""What every job must show however its nodes died: the budget kept, each lost trial re-run once
with the same parameters, nothing counted twice."""

from __future__ import annotations

import json

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb


def assert_budget_kept(trials: list[pb.TrialInfo], budget: int) -> list[pb.TrialInfo]:
    """Asserts that finished trials that count (COMPLETE, PRUNED) fill ``budget`` exactly, and
    that every FAIL is a lost trial re-run by exactly one retry with the same parameters.
    Returns the retries."""
    by_number = {t.number: t for t in trials}
    assert len(by_number) == len(trials), "a trial number appears twice"
    assert all(t.state in ("COMPLETE", "PRUNED", "FAIL") for t in trials), [t.state for t in trials]
    retries = [t for t in trials if t.HasField("retry_of")]
    failed = {t.number for t in trials if t.state == "FAIL"}
    retried = [t.retry_of for t in retries]
    assert sorted(retried) == sorted(set(retried)), f"a trial was re-run twice: {retried}"
    # A retry may itself be lost and re-run; the last one of a chain finished.
    assert set(retried) == failed, f"failed {sorted(failed)}, re-run {sorted(retried)}"
    for r in retries:
        # The same parameters (a trial lost before it was handed out may have had only some).
        lost, rerun = json.loads(by_number[r.retry_of].params_json), json.loads(r.params_json)
        assert lost.items() <= rerun.items(), (lost, rerun)
        assert r.number > r.retry_of
    counted = [t for t in trials if t.state in ("COMPLETE", "PRUNED")]
    assert len(counted) == budget, f"{len(counted)} finished trials for a budget of {budget}"
    return retries
