"""The deterministic plain-text summary of a finished model.

Standard library only: the node process imports this (it must not load numpy, pandas or
torch) and uses it whenever the LLM summary is unavailable, so it never fails and never
varies for the same inputs.
"""

from __future__ import annotations

import math
from typing import Mapping

MAX_CHARS = 800
_NAME_CHARS = 40
_USE_CASE_CHARS = 200
_LABELS = {"r2": "R²", "rmse": "RMSE", "mae": "MAE", "accuracy": "accuracy", "f1": "F1",
           "roc_auc": "ROC-AUC", "log_loss": "log loss"}


def template_summary(
    use_case: str,
    task: str,
    target: str,
    test_metrics: Mapping[str, float],
    feature_importance: Mapping[str, float],
) -> str:
    """A short executive summary from the test metrics and feature importance.

    Args:
        use_case: The user's words for what the model is for (may be empty).
        task: ``"regression"``, ``"binary"`` or ``"multiclass"``.
        target: The predicted column.
        test_metrics: Metric name to value on the held-out test split.
        feature_importance: Column to importance, any order (sorted here).

    Returns:
        Plain text of at most :data:`MAX_CHARS` characters.
    """
    parts = []
    goal = " ".join(str(use_case).split())
    if goal:
        parts.append(f"Goal: {_clip(goal, _USE_CASE_CHARS).rstrip('.')}.")
    parts.append(_quality_sentence(task, _clip(target, _NAME_CHARS), test_metrics))
    parts.append(_drivers_sentence(feature_importance))
    text = " ".join(p for p in parts if p)
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def _quality_sentence(task: str, target: str, m: Mapping[str, float]) -> str:
    rest: tuple[str, ...]
    if task == "regression":
        head, rest = "r2", ("rmse", "mae")
        kind = "predicts"
    else:
        head, rest = "accuracy", ("roc_auc", "f1", "log_loss")
        kind = "classifies" if task == "multiclass" else "predicts"
    if not _finite(m.get(head)):
        shown = ", ".join(f"{_LABELS.get(k, k)} {_fmt(v)}" for k, v in sorted(m.items()) if _finite(v))
        return f"The model {kind} {target}" + (f" ({shown} on held-out data)." if shown else ".")
    extra = ", ".join(f"{_LABELS[k]} {_fmt(m[k])}" for k in rest if _finite(m.get(k)))
    sentence = f"The model {kind} {target} with {_LABELS[head]} {_fmt(m[head])} on held-out data"
    if extra:
        sentence += f" ({extra})"
    if head == "r2":
        share = max(0.0, min(1.0, m[head]))
        sentence += f", explaining about {round(100 * share)}% of the variation"
    return sentence + "."


def _drivers_sentence(importance: Mapping[str, float]) -> str:
    ranked = sorted(((v, k) for k, v in importance.items() if _finite(v) and v > 0), key=lambda t: (-t[0], t[1]))
    names = [_clip(k, _NAME_CHARS) for _, k in ranked[:3]]
    if not names:
        return "No single column stands out: shuffling any one of them barely changes the score." if importance else ""
    if len(names) == 1:
        return f"{names[0]} matters most."
    follow = names[1] if len(names) == 2 else f"{names[1]} and {names[2]}"
    return f"{names[0]} matters most, followed by {follow}."


def _fmt(v: float) -> str:
    """Scores near one get two decimals; large errors get thousands separators."""
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}" if a >= 0.01 or a == 0 else f"{v:.2g}"


def _clip(s: str, n: int) -> str:
    s = str(s)
    return s if len(s) <= n else s[: n - 1] + "…"


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
