"""A job's search budget as pure functions of ``now``: when the search asks for another trial,
waits, or ends (STYLE §5: the caller reads the clock once and passes it in).

Budgets (docs/architecture.md, *A job's life*, 3): ``max_trials`` counts trials started, except
those lost with their node (their re-run counts instead: ``studies.budget_used``); the time
budget runs from the moment the search started (recorded in the job, so a resumed search keeps
the first deadline). At the deadline no trial is asked for; the ones running are asked to stop
and end as pruned with their last intermediate value.
"""

from __future__ import annotations

import enum
import math

#: The deadline of a search without a time budget.
NO_DEADLINE = math.inf


class Step(enum.Enum):
    ASK = "ask"     # a trial may start: reserve a slot, ask the study
    WAIT = "wait"   # the trial budget is used, but a trial in flight may yet be lost and re-run
    END = "end"     # the search is over (deadline passed, or every trial of the budget ended)


def deadline(started_at: float, budget_s: float) -> float:
    """When the search ends: ``budget_s`` after it started; never with no budget (0)."""
    return started_at + budget_s if budget_s > 0 else NO_DEADLINE


def past(deadline_at: float, now: float) -> bool:
    return now >= deadline_at


def timeout(deadline_at: float, now: float) -> float | None:
    """The seconds left, as ``asyncio.wait`` takes them: None without a deadline, never negative."""
    return None if deadline_at == NO_DEADLINE else max(0.0, deadline_at - now)


def next_step(*, now: float, deadline_at: float, used: int, max_trials: int, in_flight: int) -> Step:
    """What the search does next.

    Args:
        used: Trials that use the budget (``studies.budget_used``).
        in_flight: Trials this coordinator started that have not ended.
    """
    if past(deadline_at, now):
        return Step.END
    if used >= max_trials:
        # A trial in flight may be lost with its node and its re-run enqueued: it must run
        # within this budget, so the search waits for the flights rather than ending.
        return Step.WAIT if in_flight else Step.END
    return Step.ASK
