"""Text formatting for tables; pure functions, ``now`` passed in (no clock reads here)."""

from __future__ import annotations

import json

from rich.text import Text

from nexus_client.client import is_terminal, trials_done
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb

BLOCKS = " ▏▎▍▌▋▊▉█"
STATE_STYLE = {
    "COMPLETED": "green", "FAILED": "red", "CANCELLED": "yellow", "SEARCHING": "cyan",
    "PREPARING": "cyan", "FINALIZING": "cyan", "PENDING": "dim",
    "COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "dim",
}


def bar(fraction: float, width: int) -> str:
    """A horizontal bar of ``width`` cells filled to ``fraction`` with eighth blocks."""
    fraction = min(1.0, max(0.0, fraction))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + (BLOCKS[part] if part and full < width else "")
    return text.ljust(width)


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit in ("B", "KiB") else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def styled_state(name: str) -> Text:
    return Text(name, style=STATE_STYLE.get(name, ""))


def job_state(job: pb.Job) -> str:
    return pb.JobState.Name(job.state)


def elapsed(job: pb.Job, now: float) -> float:
    start = job.started_at or job.created_at
    if not start:
        return 0.0
    end = job.finished_at if job.finished_at else now
    return max(0.0, end - start)


def progress(job: pb.Job, now: float) -> tuple[float, str]:
    """(fraction, label): trials done of the trial budget, or time used of the time budget
    when the job has only a time budget."""
    if job.state == pb.COMPLETED:
        return 1.0, f"{trials_done(job)} trials"
    budget = job.spec.max_trials
    if budget > 0:
        return trials_done(job) / budget, f"{trials_done(job)}/{budget}"
    limit = job.spec.time_budget_seconds
    if limit > 0 and not is_terminal(job.state):
        used = elapsed(job, now)
        return used / limit, f"{duration(used)}/{duration(limit)}"
    return 0.0, f"{trials_done(job)} trials"


def best(job: pb.Job) -> str:
    if not job.has_best:
        return "-"
    return f"{job.metric} {job.best_value:.4g}" if job.metric else f"{job.best_value:.4g}"


def params(params_json: str, limit: int = 60) -> str:
    """Parameters as ``k=v`` pairs, cut to ``limit`` characters."""
    try:
        data = json.loads(params_json) if params_json else {}
    except json.JSONDecodeError:
        return params_json[:limit]
    if not isinstance(data, dict):
        return str(data)[:limit]
    text = " ".join(f"{k}={v}" for k, v in data.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def ago(then: float, now: float) -> str:
    if not then:
        return "never"
    return f"{max(0.0, now - then):.1f}s ago"


def best_so_far(trials: list[pb.TrialInfo], maximize: bool) -> tuple[list[int], list[float], list[float]]:
    """(numbers, values, best-so-far) over the trials that have a value, in trial order."""
    numbers, values, bests = [], [], []
    best_value: float | None = None
    for t in sorted(trials, key=lambda t: t.number):
        if not t.has_value or t.state != "COMPLETE":
            continue
        v = t.value
        if best_value is None or (v > best_value if maximize else v < best_value):
            best_value = v
        numbers.append(t.number)
        values.append(v)
        bests.append(best_value)
    return numbers, values, bests
