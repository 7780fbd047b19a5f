import numpy as np

from nexus_node.pipeline import csvio
from nexus_node.pipeline.importance import permutation_importance
from nexus_node.pipeline.prepare import fit_preprocessing, transform
from nexus_node.pipeline.profile import detect_target, profile_columns
from tests.conftest import dataset


def _titanic():
    df, _ = csvio.read_table(dataset("titanic.csv"))
    info = detect_target(df["Survived"], "Survived")
    return df, fit_preprocessing(df, profile_columns(df, "Survived", []), info)


def test_permuting_a_feature_block_equals_re_encoding_a_shuffled_raw_column():
    df, prep = _titanic()
    X = transform(df, prep)
    perm = np.random.default_rng(0).permutation(len(df))
    for spec in prep["columns"]:
        shuffled = df.copy()
        shuffled[spec["name"]] = df[spec["name"]].to_numpy()[perm]
        start, stop = spec["features"]
        blocked = X.copy()
        blocked[:, start:stop] = X[perm, start:stop]
        assert np.array_equal(transform(shuffled, prep), blocked), spec["name"]


def test_importance_finds_the_column_the_predictions_use_and_handles_minimised_metrics():
    df, prep = _titanic()
    X = transform(df, prep)
    y = (df["Sex"] == "female").to_numpy().astype(np.int64)
    sex = [i for i, n in enumerate(prep["feature_names"]) if n == "Sex=female"][0]

    def predict(Xe):
        p1 = np.clip(Xe[:, sex], 0.05, 0.95).astype(np.float64)
        return np.stack([1 - p1, p1], axis=1)

    for metric in ("accuracy", "log_loss"):
        imp = permutation_importance(predict, X, y, prep, metric, seed=0)
        assert list(imp)[0] == "Sex" and imp["Sex"] > 0.3
        assert all(v == 0.0 for k, v in imp.items() if k != "Sex")
    again = permutation_importance(predict, X, y, prep, "accuracy", seed=0)
    assert again == permutation_importance(predict, X, y, prep, "accuracy", seed=0)
