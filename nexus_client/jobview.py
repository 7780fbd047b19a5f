"""Two sections of ``nexus show``: what preparation did to each column, and the best trials
of each model family (the leaderboard).

Pure formatting over plain data (the job's profile dict and its trials), so the CLI and
any other front end can use it and tests need no node.
"""

from __future__ import annotations

import json
import math
import textwrap
from typing import Any, Iterable, Mapping, Sequence

# Trials listed per family: enough to see whether a family's best is a fluke.
LEADERS_PER_FAMILY = 3
_WRAP = 86


def format_columns(profile: Mapping[str, Any]) -> list[str]:
    """Lines of the "columns" section: used numbers (dates with their format), categories,
    then each dropped column with its reason. Empty when the profile has no columns (the
    job has not been prepared yet)."""
    cols = list(profile.get("columns") or [])
    if not cols:
        return []
    numeric = [c["name"] + (f" (date {c['date_format']})" if c.get("date_format") else "")
               for c in cols if c.get("kind") == "numeric"]
    categorical = [f"{c['name']} ({c.get('n_unique', '?')} values)" for c in cols if c.get("kind") == "categorical"]
    dropped = [c for c in cols if c.get("kind") == "dropped"]
    head = f"{len(cols) - len(dropped)} used, {len(dropped)} dropped"
    if profile.get("n_features"):
        head += f", {profile['n_features']} encoded features"
    if profile.get("format") or profile.get("encoding"):
        head += f", read as {profile.get('format') or profile['encoding']}"
    lines = [f"columns      {head}"]
    for label, names in (("numeric", numeric), ("categorical", categorical)):
        if names:
            lines += textwrap.wrap(", ".join(names), _WRAP, initial_indent=f"  {label:<12}",
                                   subsequent_indent=" " * 14)
    width = max((len(c["name"]) for c in dropped), default=0)
    lines += [f"  dropped     {c['name'].ljust(width)}  {c.get('reason') or '?'}" for c in dropped]
    return lines


def leaderboard(trials: Iterable[Any], maximize: bool, per_family: int = LEADERS_PER_FAMILY
                ) -> dict[str, list[dict[str, Any]]]:
    """The best completed trials of each family, best first.

    Args:
        trials: ``TrialInfo`` messages (or anything with ``number``, ``state``, ``value``,
            ``has_value``, ``params_json``, ``last_step``, ``duration_seconds``).
        maximize: The study's direction.
        per_family: How many trials to keep per family.

    Returns:
        ``{family: [{"number", "value", "steps", "duration_seconds", "params"}]}``, families
        ordered by their best value.
    """
    by: dict[str, list[dict[str, Any]]] = {}
    for t in trials:
        if t.state != "COMPLETE" or not t.has_value or not math.isfinite(t.value):
            continue
        params = json.loads(t.params_json) if t.params_json else {}
        family = str(params.get("family", "mlp"))
        by.setdefault(family, []).append({"number": t.number, "value": t.value, "steps": t.last_step + 1,
                                          "duration_seconds": t.duration_seconds, "params": params})
    sign = -1.0 if maximize else 1.0
    for rows in by.values():
        rows.sort(key=lambda r: (sign * r["value"], r["number"]))
        del rows[per_family:]
    return dict(sorted(by.items(), key=lambda kv: sign * kv[1][0]["value"]))


def format_leaderboard(board: Mapping[str, Sequence[Mapping[str, Any]]], metric: str) -> list[str]:
    """Lines of the "leaderboard" section from :func:`leaderboard`."""
    if not board:
        return []
    lines = [f"leaderboard  best trials per family ({metric}, validation split)"]
    for family, rows in board.items():
        for r in rows:
            lines.append(f"  {family:<5} #{r['number']:<4} {r['value']:.4g}  {r['steps']} steps  "
                         f"{r['duration_seconds']:.1f}s  {_short_params(r['params'])}")
    return lines


def _short_params(params: Mapping[str, Any]) -> str:
    """The parameters that set a family apart, briefly (no family, no defaults)."""
    parts = []
    for k, v in params.items():
        if k == "family":
            continue
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)
