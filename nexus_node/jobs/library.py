"""Which trials finalize may build an ensemble from: a pure choice over the study's trials.

The library is the best trials by validation score, plus the best few of each model family
even when they rank lower: a network and trees err differently, and that difference is what
an ensemble gains from (the reason AutoGluon stacks families rather than the top-k of one).
Only trials whose validation predictions the cluster still holds can enter, and the job's
best trial comes first, so finalize can always fall back to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable

#: The best trials overall that enter the library.
TOP = 12
#: The best trials of each family that enter it too.
PER_FAMILY = 3
#: With a time budget, the members' trials may have taken this share of it together: each
#: member is refitted twice, so finalize then takes about as long again as this share.
REFIT_SHARE = 0.25


def max_refit_seconds(time_budget_s: float) -> float | None:
    """The most the ensemble's members' trials may have taken together (finalize's
    ``max_refit_seconds``); None for a search without a time budget."""
    return REFIT_SHARE * time_budget_s if time_budget_s > 0 else None


@dataclass(frozen=True)
class Candidate:
    """A completed trial that kept its validation predictions."""

    number: int
    value: float
    params: dict[str, Any]
    epochs: int
    predictions: str   # the blob's sha256
    seconds: float = 0.0   # how long the trial ran: what refitting it costs, roughly

    @property
    def family(self) -> str:
        return str(self.params.get("family", "mlp"))


def choose_library(candidates: Iterable[Candidate], best_trial: int | None, maximize: bool,
                   held: Callable[[str], bool], top: int = TOP, per_family: int = PER_FAMILY) -> list[Candidate]:
    """The library, best first; empty when the best trial is not among the candidates
    whose predictions are ``held`` (finalize then fits the best trial alone).

    A configuration that ran twice (a retry) enters once, with its better score."""
    ranked = sorted((c for c in candidates if held(c.predictions)),
                    key=lambda c: (-c.value if maximize else c.value, c.number))
    seen: set[str] = set()
    unique = []
    for c in ranked:
        key = json.dumps(c.params, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    if not unique or unique[0].number != best_trial:
        return []
    chosen = unique[:top]
    for family in sorted({c.family for c in unique}):
        chosen += [c for c in unique if c.family == family and c not in chosen][:max(0, per_family - sum(
            1 for x in chosen if x.family == family))]
    return chosen
