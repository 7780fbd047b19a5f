"""Greedy ensemble selection (pipeline/ensemble.py), on predictions whose best answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from nexus_node.pipeline import ensemble, metrics

rng = np.random.default_rng(7)
Y = rng.normal(size=2000)


def test_two_models_with_independent_errors_are_averaged_half_and_half():
    a, b = Y + rng.normal(size=Y.size), Y + rng.normal(size=Y.size)
    sel = ensemble.select([a, b], Y, "rmse")
    assert sel.is_ensemble and set(sel.weights) == {0, 1}
    assert all(abs(w - 0.5) <= 0.1 for w in sel.weights.values())
    # Averaging two independent errors of equal size divides the error by about sqrt(2).
    assert sel.score == pytest.approx(sel.single_score / np.sqrt(2), rel=0.05)
    assert sel.score == pytest.approx(metrics.rmse(Y, ensemble.blend([a, b], [sel.weights[0], sel.weights[1]])))


def test_a_model_that_adds_nothing_leaves_the_single_best():
    good, bad = Y + 0.1 * rng.normal(size=Y.size), Y + 3 * rng.normal(size=Y.size)
    sel = ensemble.select([bad, good], Y, "r2")
    assert not sel.is_ensemble and sel.weights == {1: 1.0} and sel.single == 1
    assert sel.score == sel.single_score and "kept the single best trial" in sel.reason


def test_a_gain_smaller_than_the_threshold_keeps_the_single_model():
    base = Y + rng.normal(size=Y.size)
    twin = base + 0.01 * rng.normal(size=Y.size)   # nearly the same errors: averaging gains almost nothing
    sel = ensemble.select([base, twin], Y, "rmse")
    assert not sel.is_ensemble


def test_class_probabilities_are_averaged_and_scored_with_the_metric_s_own_direction():
    y = rng.integers(0, 2, size=3000)
    def noisy() -> np.ndarray:
        p1 = 1 / (1 + np.exp(-(2.0 * (y - 0.5) * 2 + rng.normal(scale=2.0, size=y.size))))
        return np.stack([1 - p1, p1], axis=1)
    library = [noisy() for _ in range(3)]
    for metric in ("roc_auc", "log_loss"):
        sel = ensemble.select(library, y, metric)
        assert sel.is_ensemble, sel.reason
        assert (sel.score > sel.single_score) == metrics.MAXIMIZE[metric]


def test_at_most_max_members_distinct_members():
    library = [Y + rng.normal(size=Y.size) for _ in range(8)]
    sel = ensemble.select(library, Y, "mae", max_members=3)
    assert len(sel.weights) == 3 and sum(sel.weights.values()) == pytest.approx(1.0)
    assert list(sel.weights.values()) == sorted(sel.weights.values(), reverse=True)


def test_diverged_predictions_are_never_picked():
    nan = np.full(Y.size, np.nan)
    sel = ensemble.select([nan, Y + rng.normal(size=Y.size)], Y, "r2")
    assert sel.single == 1 and 0 not in sel.weights


def test_the_same_library_gives_the_same_choice():
    library = [Y + rng.normal(size=Y.size) for _ in range(4)]
    assert ensemble.select(library, Y, "rmse") == ensemble.select(library, Y, "rmse")


def test_bad_libraries_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        ensemble.select([], Y, "r2")
    with pytest.raises(ValueError, match="shape"):
        ensemble.select([Y, Y[:-1]], Y, "r2")


def test_members_whose_refit_would_cost_past_the_limit_are_left_out():
    own = np.random.default_rng(11)
    library = [Y + own.normal(size=Y.size) for _ in range(4)]
    costs = [1.0, 1.0, 1.0, 100.0]
    sel = ensemble.select(library, Y, "rmse", costs=costs, max_cost=3.0)
    assert 3 not in sel.weights and sel.is_ensemble
    assert sum(costs[i] for i in sel.weights) <= 3.0
    # Without the limit the same library uses the costly model too.
    assert 3 in ensemble.select(library, Y, "rmse").weights


def test_the_best_single_model_is_kept_whatever_it_costs():
    own = np.random.default_rng(12)
    library = [Y + 0.5 * own.normal(size=Y.size), Y + own.normal(size=Y.size)]
    sel = ensemble.select(library, Y, "rmse", costs=[50.0, 1.0], max_cost=10.0)
    assert 0 in sel.weights


def _small_lead_from_three_rows(outlier: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth, a leader with unit errors everywhere, and a rival closer on every row but three,
    which it misses by ``outlier``."""
    r = np.random.default_rng(11)
    y = 10 * r.normal(size=1000)
    noise = r.normal(size=y.size)
    leader = y + noise
    rival = y + 0.6 * r.normal(size=y.size)
    rival[:3] = y[:3] + outlier
    return y, leader, rival


def test_a_small_lead_that_comes_from_three_rows_goes_to_the_rival_closer_everywhere_else():
    y, leader, rival = _small_lead_from_three_rows(14.5)
    assert metrics.r2(y, leader) > metrics.r2(y, rival)   # the leader leads on the score itself
    why = ensemble.rival_wins("r2", y, leader, rival)
    assert why.startswith("its lead in r2 came from the 10 of 1000 rows of largest error")
    assert "median absolute error" in why
    assert ensemble.rival_wins("rmse", y, leader, rival)


def test_a_large_lead_stands_whatever_rows_it_comes_from():
    y, leader, rival = _small_lead_from_three_rows(40.0)   # three misses that cost the rival a lot
    assert ensemble.rival_wins("r2", y, leader, rival) == ""


def test_a_small_lead_on_the_bulk_of_the_rows_stands():
    y, leader, rival = _small_lead_from_three_rows(14.5)
    close = y + 0.6 * np.random.default_rng(12).normal(size=y.size)
    behind = close + 0.1   # a little worse on every row: a small lead, but not from a handful of rows
    assert metrics.r2(y, behind) > metrics.r2(y, close) - 0.001
    assert ensemble.rival_wins("r2", y, close, behind) == ""
    assert ensemble.rival_wins("mae", y, leader, rival) == ""   # absolute errors: no handful of rows decides


def test_the_robust_check_leaves_class_probabilities_and_tiny_tables_alone():
    y, leader, rival = _small_lead_from_three_rows(14.5)
    assert ensemble.rival_wins("r2", y[:25], leader[:25], rival[:25]) == ""
    proba = np.full((20, 2), 0.5)
    assert ensemble.rival_wins("roc_auc", np.zeros(20), proba, proba) == ""


def test_selection_serves_the_runner_up_when_the_search_s_best_leads_only_on_a_handful_of_rows():
    y, leader, rival = _small_lead_from_three_rows(14.5)
    sel = ensemble.select([leader, rival], y, "r2", max_members=1, leader=0, labels=["trial 4", "trial 9"])
    assert not sel.is_ensemble and sel.single == 1 and sel.weights == {1: 1.0}
    assert "trial 9 serves instead of trial 4: its lead in r2 came from the 10 of 1000 rows" in sel.reason
    plain = ensemble.select([leader, rival], y, "mae", max_members=1, leader=0)
    assert plain.single == 0 and "serves instead" not in plain.reason
