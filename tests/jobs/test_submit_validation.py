"""The seeds a job derives stay in the range its libraries accept; metrics fit tasks."""

from __future__ import annotations

import numpy as np

from nexus_node.jobs.intake import METRICS, SEED_LIMIT, derived_seed, metrics_for


def test_derived_seeds_wrap_inside_what_numpy_accepts():
    top = SEED_LIMIT - 1
    assert derived_seed(top, 0) == top and derived_seed(top, 1) == 0 and derived_seed(5, 3) == 8
    for offset in (0, 1, 10_000):
        np.random.RandomState(derived_seed(top, offset))   # raises past 2**32 - 1


def test_every_metric_fits_exactly_one_kind_of_task():
    regression, classification = set(metrics_for("regression")), set(metrics_for("binary"))
    assert metrics_for("multiclass") == metrics_for("binary")
    assert regression | classification == set(METRICS) and not regression & classification
