import subprocess
import sys

from nexus_node.llm.template import MAX_CHARS, template_summary

IMPORTANCE = {"age": 0.2, "smoker": 1.5, "bmi": 0.3, "region": 0.004, "sex": -0.001}


def test_regression_summary_reads_well_and_names_the_top_features():
    text = template_summary("price health insurance", "regression", "charges",
                            {"r2": 0.8634, "rmse": 4512.7, "mae": 2550.2}, IMPORTANCE)
    assert text == (
        "Goal: price health insurance. The model predicts charges with R² 0.86 on held-out data "
        "(RMSE 4,513, MAE 2,550), explaining about 86% of the variation. "
        "smoker matters most, followed by bmi and age."
    )
    assert text == template_summary("price health insurance", "regression", "charges",
                                    {"r2": 0.8634, "rmse": 4512.7, "mae": 2550.2}, dict(reversed(IMPORTANCE.items())))


def test_classification_summary_and_no_standout_column():
    text = template_summary("", "binary", "Survived",
                            {"accuracy": 0.81, "roc_auc": 0.87, "f1": 0.75, "log_loss": 0.44}, {"a": 0.0, "b": -0.1})
    assert text.startswith("The model predicts Survived with accuracy 0.81 on held-out data (ROC-AUC 0.87, F1 0.75")
    assert "No single column stands out" in text and "Goal" not in text


def test_summary_is_bounded_whatever_it_is_given():
    huge = {f"column_with_a_very_long_name_{i}" * 5: float(i) for i in range(500)}
    text = template_summary("x" * 5000, "multiclass", "t" * 300, {"accuracy": float("nan"), "weird": 1e9}, huge)
    assert len(text) <= MAX_CHARS
    assert "column_with_a_very_long_name_499" in text   # the top feature, clipped but named
    assert template_summary("", "regression", "y", {}, {}) == "The model predicts y."


def test_summary_module_is_stdlib_only():
    code = ("import sys, nexus_node.llm.template as s; "
            "bad = {'numpy', 'pandas', 'torch', 'sklearn'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
