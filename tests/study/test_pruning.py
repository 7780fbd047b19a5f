"""Pruner specs: what the node sends with each trial and what a runner builds from it."""

from __future__ import annotations

import optuna
import pytest

from nexus_node.errors import InvalidInput
from nexus_node.study import pruning, studies


def test_hyperband_spans_the_longest_family():
    # 150 MLP epochs against 500 tree iterations (50 chunks): the MLP is the longer axis.
    assert pruning.spec_for("hyperband", 150, 500)["max_resource"] == 150
    # 20 epochs against 50 chunks: the trees are.
    assert pruning.spec_for("hyperband", 20, 500)["max_resource"] == 50
    pruner, warmup = pruning.build(pruning.spec_for("hyperband", 150, 500))
    assert isinstance(pruner, optuna.pruners.HyperbandPruner) and warmup == pruning.MIN_RESOURCE


def test_job_spec_follows_the_constraints():
    spec = studies.pruner_spec("hyperband", {"max_epochs": 300})
    assert spec == {"kind": "hyperband", "min_resource": 5, "max_resource": 300, "reduction_factor": 3}
    assert studies.pruner_spec("median", {"max_epochs": 300})["kind"] == "median"


@pytest.mark.parametrize("kind, cls", [("median", optuna.pruners.MedianPruner), ("none", optuna.pruners.NopPruner)])
def test_other_kinds(kind, cls):
    assert isinstance(pruning.build(pruning.spec_for(kind, 100, 500))[0], cls)


def test_bad_specs_are_invalid_input():
    with pytest.raises(InvalidInput, match="'asha' is not one of"):
        pruning.spec_for("asha", 100, 500)
    with pytest.raises(InvalidInput, match="min_resource < max_resource"):
        pruning.build({"kind": "hyperband", "min_resource": 5, "max_resource": 5})
    with pytest.raises(InvalidInput, match="reduction_factor"):
        pruning.build({"kind": "hyperband", "max_resource": 50, "reduction_factor": 1})
    with pytest.raises(InvalidInput, match="is not one of"):
        pruning.build({"kind": "percentile"})
