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

A squared-error score (R², RMSE) can be decided by a handful of rows: one model leads
because a rival missed two outliers, though the rival is closer on nearly every other row.
So no choice on such a score stands without a robust check beside it (:func:`rival_wins`):
where the lead is small, vanishes once the rows of largest error are set aside, and the
rival also has the smaller median absolute error, the rival is chosen, and the reason says
so. A large lead stands whatever rows it comes from: the user's metric is the score, and
a model that misses some rows by far is not made good by the rest. The search's best
trial is checked against the runner-up, and the ensemble against the single model.

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
#: The robust check sets aside this share of the rows (at least one), those of largest error.
TRIM_SHARE = 0.01
#: Scores of squared errors, which a handful of rows can decide.
SQUARED_ERROR_METRICS = ("r2", "rmse")
#: Fewer rows than this left after trimming: too few to overrule the score.
MIN_ROBUST_ROWS = 20
#: A lead the robust check may overrule: the rival's error at most this share above the leader's.
SMALL_LEAD = 0.05


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


def rival_wins(metric: str, y: np.ndarray, leader: np.ndarray, rival: np.ndarray) -> str:
    """Why ``rival`` should replace ``leader``, or "" when the leader stands.

    The rival wins only where the leader leads on every row (or ties) by at most
    :data:`SMALL_LEAD` of its error, loses once the :data:`TRIM_SHARE` rows of largest
    error (either model's) are set aside, and has the larger median absolute error: its
    small lead then comes from a handful of rows, and the rows as a whole side with the
    rival. Only for squared-error scores of regression values.
    """
    if metric not in SQUARED_ERROR_METRICS or leader.ndim != 1 or rival.shape != leader.shape:
        return ""
    n = y.shape[0]
    worst_n = max(1, int(np.ceil(TRIM_SHARE * n)))
    if n - worst_n < MIN_ROBUST_ROWS:
        return ""
    lead_err, rival_err = np.abs(y - leader), np.abs(y - rival)
    if not (np.all(np.isfinite(lead_err)) and np.all(np.isfinite(rival_err))):
        return ""
    maximize = metrics.MAXIMIZE[metric]

    def better(a: float, b: float) -> bool:
        return a > b if maximize else a < b

    lead_full, rival_full = metrics.score(metric, y, leader), metrics.score(metric, y, rival)
    if better(rival_full, lead_full):
        return ""   # not a lead to check: whoever ranked the leader first had its reasons (folds)
    if error_of(metric, rival_full) > error_of(metric, lead_full) * (1.0 + SMALL_LEAD):
        return ""
    keep = np.ones(n, dtype=bool)
    keep[np.argpartition(np.maximum(lead_err, rival_err), n - worst_n)[n - worst_n:]] = False
    lead_trim, rival_trim = metrics.score(metric, y[keep], leader[keep]), metrics.score(metric, y[keep], rival[keep])
    lead_mdae, rival_mdae = float(np.median(lead_err)), float(np.median(rival_err))
    if not (better(rival_trim, lead_trim) and rival_mdae < lead_mdae):
        return ""
    return (f"its lead in {metric} came from the {worst_n} of {n} rows of largest error: without them "
            f"{metric} {rival_trim:.4g} against {lead_trim:.4g}, and median absolute error "
            f"{rival_mdae:.4g} against {lead_mdae:.4g}")


def select(preds: Sequence[np.ndarray], y: np.ndarray, metric: str, rounds: int = ROUNDS,
           max_members: int = MAX_MEMBERS, min_gain: float = MIN_GAIN,
           costs: Sequence[float] | None = None, max_cost: float | None = None,
           leader: int | None = None, labels: Sequence[str] | None = None) -> Selection:
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
        leader: The library index the search ranked best (on its folds' mean, say); None
            ranks the library on these rows. Either way the single model is the leader
            unless the robust check (:func:`rival_wins`) prefers the runner-up.
        labels: What the reason calls each library model ("trial 12"); "model i" without.

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

    def best_of(indices: Sequence[int]) -> int | None:
        found: int | None = None
        for i in indices:
            if np.isfinite(singles[i]) and (found is None or better(singles[i], singles[found])):
                found = i
        return found

    single = leader if leader is not None else (best_of(range(len(arrays))) or 0)
    robust = ""
    runner_up = best_of([i for i in range(len(arrays)) if i != single])
    if runner_up is not None and (why := rival_wins(metric, y, arrays[single], arrays[runner_up])):
        name = (lambda i: labels[i]) if labels is not None else (lambda i: f"model {i}")
        robust = f"; {name(runner_up)} serves instead of {name(single)}: {why}"
        single = runner_up
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
    ensemble_wins = len(weights) > 1 and error < single_error * (1.0 - min_gain)
    if len(weights) > 1:
        averaged = total / picked
        lead, rival = (averaged, arrays[single]) if ensemble_wins else (arrays[single], averaged)
        if why := rival_wins(metric, y, lead, rival):
            ensemble_wins = not ensemble_wins
            robust += f"; {'the single model' if not ensemble_wins else 'the ensemble'} serves instead: {why}"
    if ensemble_wins:
        return Selection(weights, score, single, singles[single],
                         f"an ensemble of {len(weights)} trials scores {metric} {score:.4g} against "
                         f"{singles[single]:.4g} for the best single trial on the same "
                         f"{y.shape[0]} validation rows{robust}")
    why = ("every round picked the best single trial" if len(weights) <= 1 else
           f"an ensemble of {len(weights)} trials ({metric} {score:.4g}) is not better than the best single "
           f"trial ({best_score:.4g}) by {min_gain:.1%} of its error on the same {y.shape[0]} validation rows")
    return Selection({single: 1.0}, singles[single], single, singles[single],
                     f"kept the single best trial: {why}{robust}")


def blend(preds: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted average of members' predictions (values or class probabilities)."""
    out = np.zeros_like(np.asarray(preds[0], dtype=np.float64))
    for p, w in zip(preds, weights):
        out += float(w) * np.asarray(p, dtype=np.float64)
    return out
