import json

import optuna
import pytest

from nexus_node.errors import InvalidInput
from nexus_node.study import space
from nexus_node.study.constraints import (
    Constraints,
    apply_override,
    clamp,
    hard_bounds,
    heuristic_constraints,
    parse_override,
)
from nexus_node.study.space import default_params, suggest_params

PROFILE = {"rows": 1338, "n_features": 11, "task": "regression", "columns": []}


def test_heuristic_is_deterministic_and_json_round_trips():
    a = heuristic_constraints(PROFILE, 8 << 30)
    b = heuristic_constraints(PROFILE, 8 << 30)
    assert a == b
    assert Constraints.from_dict(json.loads(a.to_json())) == a
    assert a.source == "heuristic" and a.rationale


def test_large_tables_get_bigger_batches_and_fewer_epochs():
    small = heuristic_constraints(PROFILE, 8 << 30)
    large = heuristic_constraints({**PROFILE, "rows": 250_000}, 8 << 30)
    assert max(large.batch_sizes) > max(small.batch_sizes)
    assert large.max_epochs < small.max_epochs


def test_tiny_memory_narrows_widths():
    roomy = hard_bounds(10_000, 50, 8 << 30)
    tight = hard_bounds(10_000, 50, 64 << 20)
    assert tight.max_width < roomy.max_width


def test_absurd_values_are_clamped_with_notes():
    c = clamp(
        Constraints(max_layers=500, dropout=(0.0, 3.0), learning_rate=(-1.0, 50.0),
                    widths=(4096,), activations=("nonsense",), batch_sizes=(3,), max_epochs=10_000),
        hard_bounds(1000, 10, 8 << 30),
    )
    assert c.max_layers <= 8
    assert c.dropout[1] <= 0.7
    assert 1e-5 <= c.learning_rate[0] <= c.learning_rate[1] <= 1.0
    assert c.widths and all(w <= 1024 for w in c.widths)
    assert c.activations == ("relu",)
    assert c.max_epochs <= 500
    assert c.notes


BOUNDS = hard_bounds(1338, 11, 8 << 30)


def test_override_moves_inside_the_hard_bounds():
    base = heuristic_constraints(PROFILE, 8 << 30)
    c = apply_override(base, {"max_layers": 2, "widths": [64, 4096], "dropout": [0.1, 0.9],
                              "max_epochs": 15}, BOUNDS, "user")
    assert c.max_layers == 2
    assert c.widths == (64,)            # 4096 is past what any worker trains here
    assert c.dropout == (0.1, 0.7)      # 0.9 clamped to the absolute bound
    assert c.max_epochs == 15 and c.min_epochs <= 15   # below the heuristic's minimum is fine
    assert c.source == "user" and c.notes


def test_override_cannot_exceed_memory_bounds():
    tight = hard_bounds(100_000, 200, 64 << 20)
    c = apply_override(heuristic_constraints(PROFILE, 8 << 30), {"widths": [1024], "batch_sizes": [4096]}, tight, "user")
    assert max(c.widths) <= tight.max_width and max(c.batch_sizes) <= tight.max_batch


@pytest.mark.parametrize("text, fragment", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"layers": 3}', "unknown constraint keys"),
    ('{"dropout": 0.3}', "[low, high]"),
    ('{"max_layers": 0}', "positive integer"),
    ('{"widths": []}', "non-empty list"),
])
def test_bad_override_says_what_is_wrong(text, fragment):
    with pytest.raises(InvalidInput, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_override(text)


def test_suggested_params_stay_inside_constraints():
    c = apply_override(heuristic_constraints(PROFILE, 8 << 30), {"max_epochs": 30, "widths": [32, 64]}, BOUNDS, "user")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    families = set()
    for _ in range(30):
        p = suggest_params(study.ask(), c)
        families.add(p["family"])
        if p["family"] == "gbt":
            assert set(p) == {"family", "target_transform", "learning_rate", "max_iter", "max_leaf_nodes",
                              "min_samples_leaf", "l2_regularization"}
            assert space.GBT_MAX_ITER[0] <= p["max_iter"] <= space.GBT_MAX_ITER[1]
            assert space.GBT_LEARNING_RATE[0] <= p["learning_rate"] <= space.GBT_LEARNING_RATE[1]
            continue
        assert c.min_layers <= p["n_layers"] <= c.max_layers
        assert p["width"] in c.widths
        assert c.dropout[0] <= p["dropout"] <= c.dropout[1]
        assert c.min_epochs <= p["epochs"] <= c.max_epochs
        assert p["batch_size"] in c.batch_sizes
    # Both families by default, each sampled; the defaults start one trial of each.
    assert c.families == ("mlp", "gbt") and families == {"mlp", "gbt"}
    d = default_params(c)
    assert d["width"] in c.widths and c.min_epochs <= d["epochs"] <= c.max_epochs
    assert [cfg["family"] for cfg in space.default_configs(c)] == ["mlp", "gbt"] + ["gbt"] * len(space.GBT_PORTFOLIO)


def test_enqueued_defaults_come_back_as_the_same_configurations():
    c = heuristic_constraints(PROFILE, 8 << 30)
    study = optuna.create_study()
    for config in space.default_configs(c):
        study.enqueue_trial(space.trial_params(config))
    assert [suggest_params(study.ask(), c) for _ in space.default_configs(c)] == space.default_configs(c)


def test_a_family_list_of_one_searches_only_that_family():
    c = apply_override(heuristic_constraints(PROFILE, 8 << 30), {"families": ["gbt", "xgboost"]}, BOUNDS, "user")
    assert c.families == ("gbt",)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    assert {suggest_params(study.ask(), c)["family"] for _ in range(5)} == {"gbt"}


def test_target_choices_are_searched_and_started_from_for_both_families():
    skewed = {**PROFILE, "target_column": {"stats": {"min": 1.0, "skew": 1.5}}}
    c = heuristic_constraints(skewed, 8 << 30)
    assert c.target_transforms == ("none", "log") and c.class_weights == ()
    configs = space.default_configs(c)
    # One default per family on the plain scale, the trees' default on the log scale, then
    # the trees' portfolio.
    assert [(cfg["family"], cfg["target_transform"]) for cfg in configs] == [
        ("mlp", "none"), ("gbt", "none"), ("gbt", "log")] + [("gbt", "none")] * len(space.GBT_PORTFOLIO)
    study = optuna.create_study()
    for config in configs:
        study.enqueue_trial(space.trial_params(config))
    assert [suggest_params(study.ask(), c) for _ in configs] == configs
    random = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {(p["family"], p["target_transform"]) for p in (suggest_params(random.ask(), c) for _ in range(40))}
    assert seen == {("mlp", "none"), ("mlp", "log"), ("gbt", "none"), ("gbt", "log")}
    binary = {**PROFILE, "task": "binary", "target_column": {"stats": {"class_counts": {"a": 90, "b": 10}}}}
    cb = heuristic_constraints(binary, 8 << 30)
    assert cb.class_weights == ("none", "balanced") and cb.target_transforms == ()
    assert {cfg.get("class_weight") for cfg in space.default_configs(cb)} == {"none"}
    random = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert {suggest_params(random.ask(), cb)["class_weight"] for _ in range(20)} == {"none", "balanced"}


def test_target_choices_are_limited_to_known_values_and_old_constraints_offer_none():
    c = apply_override(heuristic_constraints(PROFILE, 8 << 30),
                       {"target_transforms": ["log", "sqrt"], "class_weights": ["heavy"]}, BOUNDS, "user")
    assert c.target_transforms == ("log",) and c.class_weights == ()
    assert any("target transforms" in n for n in c.notes) and any("class weights" in n for n in c.notes)
    # A job's constraints stored before these choices existed: configurations carry none,
    # and training keeps the old behaviour.
    old = Constraints.from_dict({k: v for k, v in c.to_dict().items()
                                 if k not in ("target_transforms", "class_weights")})
    p = suggest_params(optuna.create_study().ask(), old)
    assert "target_transform" not in p and "class_weight" not in p


@pytest.mark.parametrize("text, fragment", [
    # Typed fields: each value has its type, lists their element type and known choices.
    ('{"activations": [["relu"]]}', "'activations' must be a list of strings from ['relu'"),
    ('{"activations": ["swish"]}', '"swish" is not one of them'),
    ('{"families": ["xgboost"]}', "'families' must be a list of strings from ['mlp', 'gbt']"),
    ('{"widths": [100]}', "'widths' must be a list of integers from [8, 16"),
    ('{"widths": [true]}', "'widths' must be a list of integers"),
    ('{"batch_sizes": "64"}', "'batch_sizes' must be a non-empty list of integers"),
    ('{"target_transforms": ["sqrt"]}', "['none', 'log']"),
    ('{"class_weights": ["heavy"]}', "['none', 'balanced']"),
    ('{"max_layers": 2.5}', "'max_layers' must be a positive integer"),
    ('{"max_epochs": true}', "'max_epochs' must be a positive integer"),
    ('{"min_epochs": 10000001}', "1 to 1,000,000"),
    ('{"min_layers": 4, "max_layers": 2}', "'min_layers' (4) is above 'max_layers' (2)"),
    ('{"dropout": [0.1, "0.2"]}', "pair of finite numbers"),
    ('{"dropout": [NaN, 0.2]}', "pair of finite numbers"),
    ('{"learning_rate": [1e-3, Infinity]}', "pair of finite numbers"),
    ('{"weight_decay": [1' + "0" * 400 + ', 2]}', "pair of finite numbers"),
    ('{"dropout": [0.5, 0.1]}', "low (0.5) is above high (0.1)"),
    ('{"dropout": [0.1, 1.0]}', "from 0 and below 1"),
    ('{"learning_rate": [0, 0.1]}', "above 0"),
    ('{"weight_decay": [-1e-4, 0.1]}', "from 0"),
    ('{"rationale": 3}', "'rationale' must be a string"),
    ('{"layers": 3}', "allowed: ['activations', 'batch_sizes'"),
    # Depth and size, measured before parsing (json.loads would recurse).
    ("[" * 100_000 + "]" * 100_000, "characters long; at most 65,536"),
    ("[" * 10_000, "nested 10000 levels deep; at most 8"),
    ('{"rationale": "' + "x" * 70_000 + '"}', "characters long"),
])
def test_bad_override_is_refused_before_a_job_could_fail_on_it(text, fragment):
    with pytest.raises(InvalidInput) as e:
        parse_override(text)
    assert fragment in str(e.value)


def test_every_typed_override_applies_without_error():
    text = json.dumps({
        "min_layers": 1, "max_layers": 3, "widths": [32, 1024], "activations": ["relu", "tanh"],
        "dropout": [0, 0.5], "learning_rate": [1e-4, 2.0], "weight_decay": [0, 1e-3],
        "batch_sizes": [64, 4096], "min_epochs": 5, "max_epochs": 1000, "families": ["gbt"],
        "target_transforms": ["none", "log"], "class_weights": ["balanced"], "rationale": "mine",
    })
    c = apply_override(heuristic_constraints(PROFILE, 8 << 30), parse_override(text), BOUNDS, "user")
    assert c.families == ("gbt",) and c.activations == ("relu", "tanh")
    assert c.learning_rate[1] == 1.0 and c.max_epochs <= BOUNDS.max_epochs   # clamped, not refused


def test_the_category_encoding_is_searched_for_both_families_when_the_table_has_wide_columns():
    wide = {**PROFILE, "high_cardinality": ["title"]}
    c = heuristic_constraints(wide, 8 << 30)
    assert c.category_encodings == ("onehot", "target")
    assert heuristic_constraints(PROFILE, 8 << 30).category_encodings == ()
    # The known-good starts keep the one-hot encoding.
    assert {cfg["category_encoding"] for cfg in space.default_configs(c)} == {"onehot"}
    random = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = random.ask()
        p = suggest_params(trial, c)
        seen.add((p["family"], p["category_encoding"]))
        # The trees' choice is a parameter of its own in the study, as their others are.
        assert ("gbt_category_encoding" if p["family"] == "gbt" else "category_encoding") in trial.params
    assert seen == {("mlp", "onehot"), ("mlp", "target"), ("gbt", "onehot"), ("gbt", "target")}
    # A user may keep one encoding; an unknown one is refused naming the known ones.
    only = apply_override(c, parse_override('{"category_encodings": ["target"]}'), BOUNDS, "user")
    assert {suggest_params(random.ask(), only)["category_encoding"] for _ in range(5)} == {"target"}
    with pytest.raises(InvalidInput, match=r"\['onehot', 'target'\]"):
        parse_override('{"category_encodings": ["hashing"]}')
