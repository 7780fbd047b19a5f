import pytest
import torch

from nexus_node.pipeline.model import build_mlp
from nexus_node.pipeline.train import DeviceData, fit_fixed, train_and_score
from tests.pipeline.helpers import arrays, default_config


@pytest.mark.slow
def test_insurance_default_trial_reaches_r2_above_080(insurance):
    params = default_config(insurance)
    res = train_and_score(arrays(insurance), params, "regression", 0, "r2", seed=0, threads=1)
    assert res.state == "COMPLETE"
    assert res.value > 0.80
    assert 0 < res.epochs <= res.epochs_run <= params["epochs"]
    assert set(res.state_dict) == set(build_mlp(11, 1, params).state_dict())


def test_same_seed_same_result_other_seed_differs(insurance):
    params = {**default_config(insurance), "epochs": 4}
    data = DeviceData.from_arrays(arrays(insurance), "regression", 0)
    a = train_and_score(data, params, "regression", 0, "rmse", seed=3, threads=1)
    b = train_and_score(data, params, "regression", 0, "rmse", seed=3, threads=1)
    c = train_and_score(data, params, "regression", 0, "rmse", seed=4, threads=1)
    assert a.value == b.value and a.value != c.value
    # RMSE is in original units (dollars), not standardised ones.
    assert 2_000 < a.value < 20_000


def test_report_prunes_and_sees_every_epoch(insurance):
    seen = []

    def report(value, epoch):
        seen.append((epoch, value))
        return epoch == 2

    res = train_and_score(arrays(insurance), default_config(insurance), "regression", 0, "r2", 0, 1, report=report)
    assert res.state == "PRUNED" and res.message == "pruned at epoch 2"
    assert [e for e, _ in seen] == [0, 1, 2] and res.epochs_run == 3
    assert res.value == max(v for _, v in seen)


def test_cancel_stops_at_the_next_batch(insurance):
    flag: list[bool] = []

    def report(value, epoch):
        flag.extend([True] if epoch == 1 else [])
        return False

    res = train_and_score(arrays(insurance), default_config(insurance), "regression", 0, "r2", 0, 1,
                          report=report, cancelled=lambda: bool(flag))
    assert (res.state, res.message, res.epochs_run) == ("PRUNED", "stopped: cancelled", 2)


def test_late_pruning_answer_abandons_the_running_epoch(insurance):
    params = default_config(insurance)
    batches = -(-insurance["split"]["train"] // params["batch_size"])
    polls = 0

    def pruned():
        # Turns true in the middle of the third epoch, as an answer about epoch 1 would.
        nonlocal polls
        polls += 1
        return polls > 2 * (batches + 1) + batches // 2

    seen = []
    res = train_and_score(arrays(insurance), params, "regression", 0, "r2", 0, 1,
                          report=lambda v, e: seen.append(e) or False, pruned=pruned)
    assert (res.state, res.message, res.epochs_run) == ("PRUNED", "pruned at epoch 1", 2)
    assert seen == [0, 1]


def test_divergence_fails_with_a_reason(insurance):
    params = {**default_config(insurance), "learning_rate": 1e6}
    res = train_and_score(arrays(insurance), params, "regression", 0, "r2", 0, 1)
    assert res.state == "FAIL" and "diverged" in res.message and res.value is None


@pytest.mark.slow
def test_titanic_binary_default_trial_ranks_well(titanic):
    res = train_and_score(arrays(titanic), default_config(titanic), "binary", 2, "roc_auc", 0, 1)
    assert res.state == "COMPLETE" and res.value > 0.80


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_norm_layers_train(titanic, norm):
    params = {**default_config(titanic), "norm": norm, "epochs": 3, "batch_size": 16}
    res = train_and_score(arrays(titanic), params, "binary", 2, "log_loss", 0, 1)
    assert res.state == "COMPLETE" and 0 < res.value < 1.0
    assert any(norm in type(m).__name__.lower() for m in build_mlp(5, 2, params).modules())


def test_fit_fixed_trains_without_validation_and_reports_divergence(insurance):
    a = arrays(insurance)
    data = DeviceData.from_arrays({"X_train": a["X_train"], "y_train": a["y_train"]}, "regression", 0)
    assert data.X_val is None
    params = default_config(insurance)
    model, why = fit_fixed(data, params, 2, seed=0)
    assert why == "" and isinstance(model, torch.nn.Module)
    bad, why = fit_fixed(data, {**params, "learning_rate": 1e6}, 3, seed=0)
    assert bad is None and "diverged" in why
    with pytest.raises(ValueError, match="validation"):
        train_and_score(data, params, "regression", 0, "r2", 0)
