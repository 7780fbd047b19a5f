"""The search budget's decisions, pure (nexus_node.jobs.budget): no clock, no node."""

from __future__ import annotations

from nexus_node.jobs.budget import NO_DEADLINE, Step, deadline, next_step, past, timeout


def test_the_deadline_runs_from_the_start_of_the_search_and_zero_means_none():
    assert deadline(1000.0, 8.0) == 1008.0
    assert deadline(1000.0, 0.0) == NO_DEADLINE
    assert timeout(NO_DEADLINE, 5.0) is None
    assert timeout(1008.0, 1005.5) == 2.5 and timeout(1008.0, 2000.0) == 0.0
    assert not past(1008.0, 1007.999) and past(1008.0, 1008.0)


def test_trials_are_asked_for_until_the_trial_budget_is_used():
    assert next_step(now=0.0, deadline_at=NO_DEADLINE, used=4, max_trials=5, in_flight=2) is Step.ASK
    # Used up: wait while a trial in flight may still be lost and re-run; end when none is.
    assert next_step(now=0.0, deadline_at=NO_DEADLINE, used=5, max_trials=5, in_flight=1) is Step.WAIT
    assert next_step(now=0.0, deadline_at=NO_DEADLINE, used=5, max_trials=5, in_flight=0) is Step.END


def test_at_the_deadline_the_search_ends_whatever_is_left_of_the_trial_budget():
    end = deadline(1000.0, 8.0)
    assert next_step(now=1007.9, deadline_at=end, used=3, max_trials=500, in_flight=2) is Step.ASK
    assert next_step(now=1008.0, deadline_at=end, used=3, max_trials=500, in_flight=2) is Step.END
    assert next_step(now=1008.0, deadline_at=end, used=500, max_trials=500, in_flight=2) is Step.END
