"""What serving checks in the rows it is asked to predict, before and beside encoding them.

Training reads an unparseable cell in a number column as missing: a table with a few stray
words in a number column still trains. A prediction request is different: a cell like
``age=old`` is a caller's mistake, and predicting it as if the age were missing answers a
question nobody asked, so it is refused with the column's name (:func:`check_numbers`).

A number inside the column's format but outside the values training saw is answered, and
said (:func:`outside_range`): no model knows what happens there, trees flatten and networks
extrapolate, so the caller should know which rows those are. The same holds for a category the
model has no encoding of its own for (:func:`unseen_categories`: it is predicted as the column's
other values) and for a row whose every input cell is empty (:func:`empty_rows`: it is predicted
from the training medians and the missing categories alone): both are answered, counted
(:func:`warning_counts`) and reported, never refused, since a new category is no mistake.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from nexus_node.errors import InvalidInput
from nexus_node.pipeline.prepare import category_cells
from nexus_node.pipeline.profile import parse_dates, parse_numbers


def _numbers(s: pd.Series, spec: Mapping[str, Any]) -> np.ndarray:
    return parse_dates(s, spec["date_format"]) if spec["date_format"] else parse_numbers(s)


def check_numbers(df: pd.DataFrame, prep: Mapping[str, Any]) -> None:
    """Refuse a cell of a numeric (or date) training column that holds something other than
    a finite number (or a date in the column's format). Empty cells, the missing markers
    that :mod:`.csvio` reads as missing, and the words training itself read as missing in
    that column (``missing_words``: "unknown" in a table that trained fine) are fine.

    Raises:
        InvalidInput: Naming the column, the first bad row (1-based, header excluded), its
            value and how many rows are bad.
    """
    for spec in prep["columns"]:
        if spec["kind"] != "numeric":
            continue
        s = df[spec["name"]]
        known = s.isin(spec.get("missing_words") or []).to_numpy()
        bad = np.flatnonzero(np.isnan(_numbers(s, spec)) & s.notna().to_numpy() & ~known)
        if bad.size:
            first = int(bad[0])
            what = f"a date like the training data's ({spec['date_format']})" if spec["date_format"] else "a finite number"
            raise InvalidInput(
                f"column {spec['name']!r} holds {str(s.iloc[first])!r} in row {first + 1}"
                f"{f' (and {bad.size - 1} more rows)' if bad.size > 1 else ''}, which is not {what}: "
                "send one, or leave the cell empty for a missing value")


def outside_range(df: pd.DataFrame, prep: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """For every row, the numeric training columns whose value lies outside the range
    training saw (empty for most rows; cells that are missing are never outside).
    Preprocessing fitted before ranges were recorded reports nothing."""
    flagged: list[list[str]] = [[] for _ in range(len(df))]
    for spec in prep["columns"]:
        seen = spec.get("range") if spec["kind"] == "numeric" else None
        if not seen:
            continue
        v = _numbers(df[spec["name"]], spec)
        with np.errstate(invalid="ignore"):
            out = (v < seen[0]) | (v > seen[1])
        for i in np.flatnonzero(out).tolist():
            flagged[i].append(spec["name"])
    return [tuple(names) for names in flagged]


def unseen_categories(df: pd.DataFrame, prep: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """For every row, the categorical training columns whose value the model learned nothing
    of its own for: none of the kept categories, nor (in a column of many values) of the
    values whose training count it keeps. The value is new, or was too rare in training to
    be kept; either way the model answers with what it learned for the column's other values
    (or for no category, when training had none). Empty cells are missing, not unseen."""
    flagged: list[list[str]] = [[] for _ in range(len(df))]
    for spec in prep["columns"]:
        if spec["kind"] != "categorical":
            continue
        text = category_cells(df[spec["name"]])
        learned = [*spec["categories"], *(spec.get("counts") or {})]
        known = text.isin(learned).to_numpy() | text.isna().to_numpy()
        for i in np.flatnonzero(~known).tolist():
            flagged[i].append(spec["name"])
    return [tuple(names) for names in flagged]


def empty_rows(df: pd.DataFrame, prep: Mapping[str, Any]) -> np.ndarray:
    """Whether each row leaves every input column the model reads empty (a missing marker, or
    a word training read as missing, counts as empty): a row the model knows nothing of."""
    empty = np.ones(len(df), dtype=bool)
    for spec in prep["columns"]:
        s = df[spec["name"]]
        empty &= np.isnan(_numbers(s, spec)) if spec["kind"] == "numeric" else s.isna().to_numpy()
    return empty


def warning_counts(unseen: list[tuple[str, ...]], empty: np.ndarray) -> dict[str, Any]:
    """The input's rows counted as ``PredictWarnings`` (proto/nexus/v1/nexus.proto) carries
    them: ``rows``, ``unseen_category_rows`` (rows with any unseen category),
    ``unseen_categories`` (per column, the rows whose value in it is unseen) and
    ``empty_rows``."""
    by_column: dict[str, int] = {}
    for names in unseen:
        for name in names:
            by_column[name] = by_column.get(name, 0) + 1
    return {"rows": len(unseen), "unseen_category_rows": sum(1 for names in unseen if names),
            "unseen_categories": by_column, "empty_rows": int(empty.sum())}
