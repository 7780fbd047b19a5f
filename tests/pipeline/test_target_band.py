"""A regression prediction stays within a band around the training target range
(pipeline/target.py), in every family and in old artifacts' absence of one."""

from __future__ import annotations

import numpy as np
import pytest

from nexus_node.pipeline import target


@pytest.mark.parametrize("log", [False, True])
def test_a_wild_prediction_is_clipped_to_the_band(log):
    y = np.array([100.0, 150.0, 200.0, 300.0, 1100.0])
    t = target.fit_target_transform(y, log=log)
    assert t["band"] == pytest.approx([0.0, 1200.0])   # 10% of the 1000-wide range, not below 0
    z = target.forward(np.array([50.0, 500.0, 4700.0]), t)
    assert target.inverse(z, t) == pytest.approx([50.0, 500.0, 1200.0])
    assert target.inverse(np.array([-1e6]), t) == pytest.approx([0.0])


def test_a_target_with_negative_values_may_go_below_zero():
    t = target.fit_target_transform(np.array([-10.0, 0.0, 10.0]))
    assert t["band"] == pytest.approx([-12.0, 12.0])


def test_a_transform_without_a_band_is_not_clipped():
    t = target.fit_target_transform(np.array([1.0, 2.0, 3.0]))
    del t["band"]
    assert target.inverse(np.array([100.0]), t) == pytest.approx([100.0 * t["std"] + t["mean"]])


def test_the_band_is_plain_json():
    import json

    t = target.fit_target_transform(np.array([3.0, 4.0]))
    assert json.loads(json.dumps(t, allow_nan=False)) == t
