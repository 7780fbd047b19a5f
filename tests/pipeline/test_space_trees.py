"""The trees' search space as the node samples it."""

from __future__ import annotations

import optuna

from nexus_node.study import space
from nexus_node.study.constraints import Constraints


def test_tree_trials_reach_shallow_trees():
    # Small tables often want 4-8 leaves (see space.GBT_MAX_LEAF_NODES): the space must reach them.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    leaves = [space.suggest_params(study.ask(), Constraints(families=("gbt",)))["max_leaf_nodes"] for _ in range(300)]
    assert min(leaves) == 4 and max(leaves) <= 128
    assert sum(n < 8 for n in leaves) >= 30   # log-uniform: about a seventh of the trials
