"""Pruner specs: the JSON a node sends with each trial, and the Optuna pruner built from it.

The node decides the spec once per job (from its constraints) and sends it with every trial,
so every runner, on any node, builds the same pruner: pruning decisions are made by the
runner that trains the trial, against the trials the study holds.

Kinds:

* ``hyperband``: Optuna's ``HyperbandPruner``, i.e. several asynchronous
  successive-halving brackets. Asynchronous: a trial is promoted or stopped at each rung by
  comparing it with the trials that reached that rung so far, never waiting for a rung to
  fill, so parallel slots never idle. Brackets hedge between stopping early and letting slow
  starters run; the bracket of a trial is a hash of the study name and trial number, the same
  on every runner.
* ``median`` (default): ``MedianPruner`` (stop a trial behind the median of earlier trials
  at the same step). Measured against ``hyperband`` through a real node (insurance and
  titanic, 30 trials, 5 seeds each): hyperband trained more steps and searched longer for
  the same best validation and test scores, because early stopping (10 epochs, 10 chunks
  without improvement) ends most trials before the brackets that prune late get to act.
* ``none``: never prune.

Steps are what the trainers report: MLP epochs (0-based) and, for trees, 10-iteration chunks
(see :mod:`nexus_node.pipeline.gbt`), so both families share one resource axis.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import optuna

from nexus_node.errors import InvalidInput

KINDS = ("hyperband", "median", "none")
DEFAULT_KIND = "median"

# Trees report one step per 10 boosting iterations (pipeline/gbt.py's CHUNK); kept here
# rather than imported so the node process never imports scikit-learn's side.
TREE_CHUNK = 10

# No rung before step 5: the first epochs of an MLP mostly measure its learning rate, and
# 50 boosting iterations are the fewest a tree trial may ask for.
MIN_RESOURCE = 5
REDUCTION_FACTOR = 3


def spec_for(kind: str, max_epochs: int, max_tree_iter: int) -> dict[str, Any]:
    """The spec for a job whose MLPs train at most ``max_epochs`` epochs and whose trees at
    most ``max_tree_iter`` iterations.

    Hyperband's ``max_resource`` is set here rather than left to ``"auto"``: ``auto`` takes
    the steps of whichever trial completes first, and each runner would fix its own value
    from whatever it saw first, so runners could disagree on the brackets.
    """
    if kind == "median":
        return {"kind": "median", "n_startup_trials": 4, "n_warmup_steps": MIN_RESOURCE}
    if kind == "none":
        return {"kind": "none"}
    if kind != "hyperband":
        raise InvalidInput(f"pruner kind {kind!r} is not one of {', '.join(KINDS)}")
    longest = max(int(max_epochs), math.ceil(int(max_tree_iter) / TREE_CHUNK), MIN_RESOURCE + 1)
    return {"kind": "hyperband", "min_resource": MIN_RESOURCE, "max_resource": longest,
            "reduction_factor": REDUCTION_FACTOR}


def build(spec: Mapping[str, Any] | None) -> tuple[optuna.pruners.BasePruner, int]:
    """The pruner for ``spec`` and its warm-up: the first step at which it can say "prune"
    (asking before that is a wasted round trip to the study)."""
    spec = spec or {"kind": "median"}
    kind = spec.get("kind")
    if kind == "none":
        return optuna.pruners.NopPruner(), 1 << 30
    if kind == "median":
        warmup = int(spec.get("n_warmup_steps", 5))
        return optuna.pruners.MedianPruner(n_startup_trials=int(spec.get("n_startup_trials", 5)),
                                           n_warmup_steps=warmup), warmup
    if kind == "hyperband":
        low, high = int(spec.get("min_resource", MIN_RESOURCE)), int(spec["max_resource"])
        if not 1 <= low < high:
            raise InvalidInput(f"hyperband needs 1 <= min_resource < max_resource, got {low}, {high}")
        eta = int(spec.get("reduction_factor", REDUCTION_FACTOR))
        if eta < 2:
            raise InvalidInput(f"hyperband reduction_factor must be >= 2, got {eta}")
        # A rung at step s is checked once step s is reported: before min_resource no bracket
        # has a rung.
        return optuna.pruners.HyperbandPruner(min_resource=low, max_resource=high, reduction_factor=eta), low
    raise InvalidInput(f"pruner kind {kind!r} is not one of {', '.join(KINDS)}")
