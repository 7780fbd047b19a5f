"""Profile a text table: what each column is, which to drop and why, and the task type.

Pure functions over a frame of text cells from :mod:`.csvio`. The typing helpers here
(:func:`parse_numbers`, :func:`parse_dates`) are the only way any step turns text into
numbers, so training and prediction read a cell the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from nexus_node.pipeline.csvcheck import MAX_CLASSES, MAX_INTEGER_CLASSES, target_task  # noqa: F401 (re-exported)
from nexus_node.pipeline.target import skewness

# One-hot keeps at most this many categories per column (by training frequency).
CATEGORY_LIMIT = 30
# A text column with more distinct values than CATEGORY_LIMIT and than half its cells is
# free text (dropped) unless at least this share of its cells repeat another cell's value:
# then it is a key shared by groups of rows (a book's title, a ticket, an author), and a
# row's group says something about it (encoded as the group's size and the most frequent
# values, see ``prepare.fit_categorical``). Free text repeats almost never (names: 0%).
MIN_REPEATED_SHARE = 0.2
# MAX_CLASSES: text targets with more classes are refused (a per-class probability over
# hundreds of labels is not what a tabular MLP on a few thousand rows can learn).
# MAX_INTEGER_CLASSES: integer targets with at most this many distinct values are labels
# (ratings, counts of children, codes), not quantities. Both live with the task decision,
# nexus_node.pipeline.csvcheck.target_task, which the node also runs on an upload at submit.
# Tried in order; the first format that parses every non-missing cell wins. Day-first
# after month-first for slashes (US exports are the more common), ISO forms first.
DATE_FORMATS = (
    "%Y-%m-%d", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S",
    "%d-%m-%Y", "%m/%d/%Y", "%d/%m/%Y", "%Y/%m/%d", "%d.%m.%Y", "%m/%d/%y",
)
_ID_TOKENS = {"id", "uuid", "guid", "rownames", "rowid", "index"}
_EPOCH = pd.Timestamp("1970-01-01")


@dataclass
class ColumnInfo:
    """What profiling decided about one input column.

    Attributes:
        name: Column name as in the header (stripped).
        kind: ``"numeric"``, ``"categorical"`` or ``"dropped"``.
        dtype: ``"int64"``, ``"float64"``, ``"date"``, ``"str"`` or ``"empty"``.
        date_format: The strptime format when ``dtype == "date"``.
        reason: Why the column was dropped (only for ``kind == "dropped"``).
    """

    name: str
    kind: str
    dtype: str
    missing_fraction: float
    n_unique: int
    stats: dict[str, Any] = field(default_factory=dict)
    date_format: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name, "dtype": self.dtype, "kind": self.kind,
            "missing_fraction": self.missing_fraction, "n_unique": self.n_unique,
            "stats": self.stats,
        }
        if self.date_format:
            d["date_format"] = self.date_format
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass(frozen=True)
class TargetInfo:
    """The task a target column defines.

    Attributes:
        task: ``"regression"``, ``"binary"`` or ``"multiclass"``.
        numeric: Whether the target's cells are numbers (labels then print as numbers).
        classes: Class labels in model-output order (classification only).
    """

    name: str
    task: str
    numeric: bool
    classes: tuple[str, ...] = ()


# Decoration a spreadsheet puts around numbers exported as text: a currency sign, a
# trailing percent sign, thousands separators in groups of three ("$1,234.50", "12%").
_DECORATED = re.compile(r"^(?P<sign>[-+]?)[$€£¥]?\s*(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d*\.?\d+)\s*%?$")


def parse_numbers(s: pd.Series) -> np.ndarray:
    """Cells as float64; missing, unparseable and infinite cells become NaN.

    Cells that plain parsing rejects get a second chance without currency signs, percent
    signs and thousands separators (a percent stays in percent units: "12%" is 12), so a
    column of amounts exported as text is a number column, at training and prediction
    time alike.
    """
    v = _numbers_with_infinities(s)
    return np.where(np.isfinite(v), v, np.nan)


def _numbers_with_infinities(s: pd.Series) -> np.ndarray:
    """:func:`parse_numbers` before infinite numbers become NaN."""
    v = np.array(pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan))
    failed = np.isnan(v) & s.notna().to_numpy()
    if failed.any():
        m = s[failed].astype("str").str.extract(_DECORATED)
        cleaned = (m["sign"].fillna("") + m["num"].str.replace(",", "", regex=False)).where(m["num"].notna())
        v[failed] = pd.to_numeric(cleaned, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return v


def parse_dates(s: pd.Series, fmt: str) -> np.ndarray:
    """Cells in ``fmt`` as days since 1970-01-01 (float64, fractional for times); NaN
    where a cell is missing or does not match."""
    dt = pd.to_datetime(s, format=fmt, errors="coerce")
    days = (dt - _EPOCH) / pd.Timedelta(days=1)
    return np.asarray(days, dtype="float64")


def number_label(v: float) -> str:
    """A class label for a numeric cell: ``"1"`` for 1.0, so labels read like the file."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def detect_date_format(s: pd.Series) -> str | None:
    """The first of :data:`DATE_FORMATS` that parses every non-missing cell, else None."""
    present = s.dropna()
    if present.empty:
        return None
    # A cheap look at a few cells rules most formats out before parsing the whole column.
    head = present.iloc[:50]
    for fmt in DATE_FORMATS:
        if pd.to_datetime(head, format=fmt, errors="coerce").notna().all():
            if pd.to_datetime(present, format=fmt, errors="coerce").notna().all():
                return fmt
    return None


def _name_says_id(name: str) -> bool:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    tokens = {t.lower() for t in re.split(r"[^A-Za-z0-9]+", spaced) if t}
    return bool(tokens & _ID_TOKENS) or name.lower().startswith("unnamed:")


def _numeric_stats(v: np.ndarray) -> dict[str, float]:
    x = v[~np.isnan(v)]
    return {
        "min": float(x.min()), "max": float(x.max()), "mean": float(x.mean()),
        "std": float(x.std()), "median": float(np.median(x)),
    }


def _top_values(s: pd.Series, k: int = 5) -> list[list[Any]]:
    counts = s.dropna().value_counts()
    return [[str(v), int(c)] for v, c in counts.iloc[:k].items()]


def profile_column(s: pd.Series, name: str, rows: int) -> ColumnInfo:
    """Decide what one column is and whether the model can use it.

    Args:
        s: The column's text cells (``NA`` where missing).
        name: The column name.
        rows: Row count of the table.

    Returns:
        The column's :class:`ColumnInfo`.
    """
    present = s.dropna()
    n_present = int(present.size)
    missing = 1.0 - n_present / rows if rows else 1.0
    n_unique = int(present.nunique())
    info = ColumnInfo(name=name, kind="dropped", dtype="empty", missing_fraction=missing, n_unique=n_unique)
    if n_present == 0:
        info.reason = "empty: no values"
        return info
    numbers = parse_numbers(present)
    if not np.isnan(numbers).any():
        integral = bool(np.all(numbers == np.round(numbers)))
        info.dtype, info.stats = ("int64" if integral else "float64"), _numeric_stats(numbers)
        if n_unique == 1 and n_present == rows:
            info.reason = f"constant: every row is {present.iloc[0]}"
        elif integral and n_unique == rows and rows >= 10 and (
            np.all(np.diff(numbers) > 0) or np.all(np.diff(numbers) < 0)
        ):
            info.reason = "row number: unique, ordered integers"
        elif integral and _name_says_id(name) and n_unique > CATEGORY_LIMIT and n_unique >= 0.1 * n_present:
            info.reason = f"identifier: the name says id and it has {n_unique} distinct values"
        else:
            info.kind = "numeric"
        return info
    fmt = detect_date_format(present)
    if fmt is not None:
        days = parse_dates(present, fmt)
        stats: dict[str, Any] = _numeric_stats(days)
        stats["first"], stats["last"] = str(present.iloc[np.argmin(days)]), str(present.iloc[np.argmax(days)])
        info.dtype, info.date_format, info.stats = "date", fmt, stats
        if n_unique == 1 and n_present == rows:
            info.reason = f"constant: every row is {present.iloc[0]}"
        else:
            info.kind = "numeric"
        return info
    info.dtype, info.stats = "str", {"top": _top_values(present)}
    if n_unique == 1 and n_present == rows:
        info.reason = f"constant: every row is {present.iloc[0]!r}"
    elif n_unique == n_present and n_present >= 10:
        info.reason = "identifier or free text: a different value in every row"
    elif n_unique > CATEGORY_LIMIT and n_unique > 0.5 * n_present and (
            repeated := repeated_share(present)) < MIN_REPEATED_SHARE:
        info.reason = (f"free text: {n_unique} distinct values in {n_present} rows, "
                       f"{100 * repeated:.0f}% of them shared with another row")
    else:
        info.kind = "categorical"
    return info


def repeated_share(present: pd.Series) -> float:
    """Share of the (non-missing) cells whose value occurs in another cell too."""
    counts = present.map(present.value_counts())
    return float((counts.to_numpy() > 1).mean()) if present.size else 0.0


def detect_target(s: pd.Series, name: str) -> TargetInfo:
    """The task a target column defines.

    Numbers with exactly two values are binary, whole numbers with up to
    :data:`MAX_INTEGER_CLASSES` values are multiclass, other numbers are regression. Text
    with two values is binary, with up to :data:`MAX_CLASSES` values multiclass.

    Args:
        s: The target's cells with missing rows already removed.
        name: The target column name (for messages).

    Raises:
        InvalidInput: The target holds infinite numbers, is constant, or is text with too
            many distinct values.
    """
    raw = _numbers_with_infinities(s)
    infinite = np.isinf(raw)
    numbers = raw[~infinite]
    numeric = not np.isnan(numbers).any()
    uniq = np.unique(numbers) if numeric else np.array(sorted(set(s.tolist())), dtype=object)
    integral = numeric and bool(np.all(uniq == np.round(uniq)))
    task = target_task(name, numeric, int(uniq.size), integral, str(s.iloc[0]) if len(s) else "",
                       int(infinite.sum()), str(s[infinite].iloc[0]) if infinite.any() else "")
    if task == "regression":
        return TargetInfo(name, task, True)
    classes = tuple(number_label(v) for v in uniq) if numeric else tuple(str(v) for v in uniq)
    return TargetInfo(name, task, numeric, classes)


def target_labels(s: pd.Series, info: TargetInfo) -> np.ndarray:
    """Class indices (int64) of target cells, in ``info.classes`` order."""
    labels = [number_label(v) for v in parse_numbers(s)] if info.numeric else s.tolist()
    index = {c: i for i, c in enumerate(info.classes)}
    return np.array([index[v] for v in labels], dtype=np.int64)


def profile_columns(df: pd.DataFrame, target: str, drop_columns: Sequence[str]) -> list[ColumnInfo]:
    """Profile every column but the target; columns in ``drop_columns`` are dropped on request."""
    out = []
    for name in df.columns:
        if name == target:
            continue
        if name in drop_columns:
            s = df[name]
            out.append(ColumnInfo(name, "dropped", "str", float(s.isna().mean()), int(s.nunique()),
                                  reason="dropped on request"))
            continue
        out.append(profile_column(df[name], name, len(df)))
    return out


def target_summary(s: pd.Series, info: TargetInfo) -> dict[str, Any]:
    """Statistics of the target for the profile (after missing rows are removed)."""
    if info.task == "regression":
        values = parse_numbers(s)
        # Skewness decides whether the search tries a log scale (study/constraints.py).
        stats = {**_numeric_stats(values), "skew": skewness(values[~np.isnan(values)])}
        return {"name": info.name, "dtype": "float64", "n_unique": int(s.nunique()), "stats": stats}
    labels = target_labels(s, info)
    counts = np.bincount(labels, minlength=len(info.classes))
    return {"name": info.name, "dtype": "float64" if info.numeric else "str", "n_unique": len(info.classes),
            "stats": {"class_counts": {c: int(n) for c, n in zip(info.classes, counts)}}}
