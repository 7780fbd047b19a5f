"""Ensemble selection over a job's trials (Caruana et al., 2004, "Ensemble selection from
libraries of models"), as auto-sklearn and AutoGluon's ``WeightedEnsemble`` do it.

Every completed trial keeps its predictions on the rows it was scored on (the validation
split, or every train+validation row out of fold on a small table). Greedy forward selection
with replacement then builds a weighted average: start from nothing, and each round add the
trial whose addition makes the average score best; a trial picked ``n`` times of ``R`` rounds
weighs ``n / R``. Picking with replacement is what keeps it from overfitting the rows it is
chosen on (the paper's main point): a strong model gains weight by being picked again rather
than by a new weak one being added.

The ensemble is scored on the same rows it was chosen on, which flatters it a little, so it
replaces the best single model only when it removes at least :data:`MIN_GAIN` of the single
model's error. Otherwise the single model stays: fewer models to retrain and serve, and no
claim the rows cannot back.

Pure numpy: the finalize runner calls it on arrays it already holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nexus_node.pipeline import metrics

#: Rounds of greedy selection (AutoGluon's default ensemble size is 25 too); weights are
#: multiples of 1/ROUNDS.
ROUNDS = 25
#: Most distinct members: each is retrained twice in finalize and served on every prediction.
MAX_MEMBERS = 5
#: The share of the best single model's error the ensemble must remove to replace it.
MIN_GAIN = 0.005


@dataclass(frozen=True)
class Selection:
    """What selection chose.

    Attributes:
        weights: Library index to weight (summing to 1), heaviest first; one entry with
            weight 1 when the single best model was kept.
        score: The chosen ensemble's (or the single model's) score on the rows.
        single: Library index of the best single model.
        single_score: Its score on the same rows.
        reason: Why this was chosen, for people.
    """

    weights: dict[int, float]
    score: float
    single: int
    single_score: float
    reason: str

    @property
    def is_ensemble(self) -> bool:
        return len(self.weights) > 1


def error_of(metric: str, value: float) -> float:
    """A score as an error, smaller better and 0 perfect: ``1 - value`` for the maximised
    metrics (each at most 1), the value itself for the minimised ones."""
    return 1.0 - value if metrics.MAXIMIZE[metric] else value


def select(preds: Sequence[np.ndarray], y: np.ndarray, metric: str, rounds: int = ROUNDS,
           max_members: int = MAX_MEMBERS, min_gain: float = MIN_GAIN,
           costs: Sequence[float] | None = None, max_cost: float | None = None) -> Selection:
    """Choose a weighted average of ``preds`` (values, or class probabilities of shape
    ``(rows, classes)``; every one over the same rows as ``y``) by greedy forward selection
    with replacement, or the best single one.

    Args:
        preds: The library: each trial's predictions.
        y: True values (regression) or class indices, one per row.
        metric: What to optimise (see :mod:`.metrics`; its own direction).
        rounds: Selection rounds.
        max_members: Once this many distinct members are in, only they may be picked again.
        min_gain: Share of the single model's error the ensemble must remove to be chosen.
        costs: What refitting each model costs (its trial's seconds); with ``max_cost``, a
            model whose cost would take the members' total past it is not added (the first
            member always is): finalize refits every member twice, and a user who gave the
            search a time budget does not expect finalize to take several times more.
        max_cost: The most the distinct members may cost together; None for no limit.

    Raises:
        ValueError: An empty library, or predictions whose shape does not match ``y``.
    """
    if not preds:
        raise ValueError("ensemble selection needs at least one model's predictions")
    arrays = [np.asarray(p, dtype=np.float64) for p in preds]
    for i, p in enumerate(arrays):
        if p.shape[0] != y.shape[0] or p.shape != arrays[0].shape:
            raise ValueError(f"model {i}'s predictions have shape {p.shape}, "
                             f"expected {arrays[0].shape} over {y.shape[0]} rows")
    maximize = metrics.MAXIMIZE[metric]

    def better(a: float, b: float) -> bool:
        return a > b if maximize else a < b

    singles = [metrics.score(metric, y, p) for p in arrays]
    single = 0
    for i, s in enumerate(singles):
        if np.isfinite(s) and (not np.isfinite(singles[single]) or better(s, singles[single])):
            single = i
    counts: dict[int, int] = {}
    total = np.zeros_like(arrays[0])
    best_score = singles[single]
    spent = 0.0

    def affordable(i: int) -> bool:
        if i in counts or not counts or costs is None or max_cost is None:
            return True
        return spent + float(costs[i]) <= max_cost

    for r in range(1, rounds + 1):
        pool = list(counts) if len(counts) >= max_members else range(len(arrays))
        pick, pick_score = None, None
        for i in (i for i in pool if affordable(i)):
            s = metrics.score(metric, y, (total + arrays[i]) / r)
            if np.isfinite(s) and (pick_score is None or better(s, pick_score)):
                pick, pick_score = i, s
        if pick is None:
            break
        if pick not in counts and costs is not None:
            spent += float(costs[pick])
        counts[pick] = counts.get(pick, 0) + 1
        total += arrays[pick]
    picked = sum(counts.values())
    score = metrics.score(metric, y, total / picked) if picked else singles[single]
    weights = {i: n / picked for i, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}
    single_error, error = error_of(metric, singles[single]), error_of(metric, score)
    if len(weights) > 1 and error < single_error * (1.0 - min_gain):
        return Selection(weights, score, single, singles[single],
                         f"an ensemble of {len(weights)} trials scores {metric} {score:.4g} against "
                         f"{singles[single]:.4g} for the best single trial on the same "
                         f"{y.shape[0]} validation rows")
    why = ("every round picked the best single trial" if len(weights) <= 1 else
           f"an ensemble of {len(weights)} trials ({metric} {score:.4g}) is not better than the best single "
           f"trial ({best_score:.4g}) by {min_gain:.1%} of its error on the same {y.shape[0]} validation rows")
    return Selection({single: 1.0}, singles[single], single, singles[single], f"kept the single best trial: {why}")


def blend(preds: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted average of members' predictions (values or class probabilities)."""
    out = np.zeros_like(np.asarray(preds[0], dtype=np.float64))
    for p, w in zip(preds, weights):
        out += float(w) * np.asarray(p, dtype=np.float64)
    return out
