"""What of a dataset may leave the cluster in a prompt: metadata, never rows.

Pure. :func:`dataset_metadata` rebuilds the profile from an allow-list, field by field;
nothing of the profile passes through unless a rule below lets it.

Per column kind:

* every column: name, type, kind, missing fraction, distinct count;
* numeric columns: min, max, mean, std, median (rounded to 4 significant digits);
* date columns: only the span in days (the first and last dates are values of a row,
  a birth date for example, and are withheld);
* categorical columns: up to :data:`MAX_CATEGORIES` category labels with their share of
  rows, but only labels seen in at least :data:`MIN_LABEL_COUNT` rows, at most
  :data:`MAX_LABEL_CHARS` long, and only when the column's name does not look like an
  identifier or free text (a rare label may point at one person);
* dropped columns (identifiers, free text, constants): name, type and the kind of reason
  (``"identifier or free text"``), never the values or the reason's detail (a constant's
  reason quotes its value);
* columns whose name looks like an identifier or personal text (``id``, ``name``,
  ``email``, ``ticket``, ...): no statistics and no labels, whatever their kind;
* the target: its name and type; for regression its statistics, for classification the
  class shares under the same label rule as categories.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, TypeGuard

MAX_COLUMNS = 150
MAX_CATEGORIES = 8
MIN_LABEL_COUNT = 5
MAX_LABEL_CHARS = 32
MAX_NAME_CHARS = 64
# Name tokens of columns whose values identify a person or a record, or are prose.
_PERSONAL_TOKENS = frozenset({
    "id", "ids", "uuid", "guid", "key", "name", "names", "firstname", "lastname", "surname",
    "email", "mail", "phone", "mobile", "address", "street", "zip", "zipcode", "postcode",
    "ticket", "comment", "comments", "description", "note", "notes", "text", "message",
    "ssn", "passport", "iban", "account", "url", "ip", "username", "login", "rownames", "index",
})
_STATS = ("min", "max", "mean", "std", "median")


def looks_personal(column: str) -> bool:
    """Whether a column's name says its values identify someone or are free text.

    ``PassengerId``, ``customer_id``, ``Name``, ``E-mail`` and ``Ticket`` do; ``age`` and
    ``region`` do not. CamelCase and any punctuation split the name into tokens.
    """
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", column)
    tokens = {t.lower() for t in re.split(r"[^A-Za-z0-9]+", spaced) if t}
    return bool(tokens & _PERSONAL_TOKENS) or column.lower().startswith("unnamed:")


def dataset_metadata(profile: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a dataset profile that may be sent to an LLM.

    Args:
        profile: The ``prepare`` task's profile (rows, task, columns, target_column).

    Returns:
        A JSON-able dict: rows, task, encoded feature count, target, and one entry per
        column (at most :data:`MAX_COLUMNS`; ``more_columns`` counts the rest).
    """
    rows = int(profile.get("rows", 0) or 0)
    columns = list(profile.get("columns") or [])
    out: dict[str, Any] = {
        "rows": rows,
        "task": str(profile.get("task", "")),
        "encoded_features": int(profile.get("n_features", 0) or 0),
        "target": _target(profile.get("target_column") or {}, str(profile.get("target", "")), rows),
        "columns": [_column(c, rows) for c in columns[:MAX_COLUMNS]],
    }
    if len(columns) > MAX_COLUMNS:
        out["more_columns"] = len(columns) - MAX_COLUMNS
    return out


def _column(c: Mapping[str, Any], rows: int) -> dict[str, Any]:
    name = str(c.get("name", ""))
    kind, dtype = str(c.get("kind", "")), str(c.get("dtype", ""))
    d: dict[str, Any] = {
        "name": _clip(name, MAX_NAME_CHARS), "dtype": dtype, "kind": kind,
        "missing_fraction": _round(c.get("missing_fraction", 0.0)), "distinct": int(c.get("n_unique", 0) or 0),
    }
    if kind == "dropped":
        # "constant: every row is 'X'" quotes a value: keep only the kind of reason.
        d["dropped_because"] = str(c.get("reason") or "").split(":", 1)[0][:40]
        return d
    if looks_personal(name):
        d["values_withheld"] = "the name suggests identifiers or personal text"
        return d
    stats = c.get("stats") or {}
    if dtype == "date":
        lo, hi = stats.get("min"), stats.get("max")
        if _finite(lo) and _finite(hi):
            d["span_days"] = _round(float(hi) - float(lo))
    elif kind == "numeric":
        d["stats"] = {k: _round(stats[k]) for k in _STATS if _finite(stats.get(k))}
    elif kind == "categorical":
        present = max(1, round(rows * (1.0 - float(c.get("missing_fraction", 0.0) or 0.0))))
        d["top_categories"] = _shares(stats.get("top") or [], present)
    return d


def _target(t: Mapping[str, Any], name: str, rows: int) -> dict[str, Any]:
    d: dict[str, Any] = {"name": _clip(str(t.get("name", name)), MAX_NAME_CHARS), "dtype": str(t.get("dtype", ""))}
    stats = t.get("stats") or {}
    counts = stats.get("class_counts")
    if isinstance(counts, Mapping):
        total = max(1, sum(int(v) for v in counts.values()))
        d["classes"] = len(counts)
        if not looks_personal(d["name"]):
            d["class_shares"] = _shares(list(counts.items()), total, limit=len(counts), hide_rare=True)
    else:
        d["stats"] = {k: _round(stats[k]) for k in _STATS if _finite(stats.get(k))}
    return d


def _shares(pairs: list[Any], total: int, limit: int = MAX_CATEGORIES, hide_rare: bool = False) -> list[list[Any]]:
    """``[label, share]`` pairs; a rare or long label is withheld (or, for classes, masked)."""
    out: list[list[Any]] = []
    for i, pair in enumerate(pairs[:limit]):
        label, count = str(pair[0]), int(pair[1])
        if count >= MIN_LABEL_COUNT and len(label) <= MAX_LABEL_CHARS:
            out.append([label, _round(count / total)])
        elif hide_rare:
            out.append([f"class {i + 1}", _round(count / total)])
    return out


def _finite(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _round(v: Any) -> float:
    """Four significant digits: enough to reason about scale, too coarse to pick out a row."""
    x = float(v) if _finite(v) else 0.0
    return float(f"{x:.4g}")


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
