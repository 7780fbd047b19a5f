"""A trial's memory in its runner: what the process holds, and what the trial has left of its
budget (the runner's ``--trial-memory-mb``, which its memory watch enforces).

The budget counts everything a trial adds, the libraries it is the first to import
included (scikit-learn and SciPy: about 90 MB on top of torch, measured with
:func:`anon_rss`), so a task sizes its rows by the room it has when it sizes them
(:func:`room`), not by the budget alone.
"""

from __future__ import annotations

import os

_PAGE = os.sysconf("SC_PAGE_SIZE")
_budget = 0               # bytes; 0: no budget
_base: int | None = None  # anon_rss() when the running task began; None: not recorded


def anon_rss() -> int:
    """Resident anonymous memory of this process (heap, tensors, arrays), in bytes.

    Anonymous only: pages of memory-mapped shards are file-backed, shared with the page
    cache, and the kernel can drop them; they are not what a trial costs the machine.
    (``/proc/self/statm``: resident minus shared pages, which is ``RssAnon`` of
    ``/proc/self/status`` read from one short line.)
    """
    with open("/proc/self/statm", "rb") as f:
        fields = f.read().split()
    return (int(fields[1]) - int(fields[2])) * _PAGE


def set_budget(mb: int) -> None:
    """The memory a trial may add to this runner (0: no budget)."""
    global _budget, _base
    _budget, _base = max(0, int(mb)) << 20, None


def budget() -> int:
    """The memory in bytes a trial may add to this runner (0: no budget)."""
    return _budget


def begin_task() -> None:
    """A task starts now: what it adds from here counts against the budget (only a trial is
    held to it; finalize sizes its rows by it too)."""
    global _base
    _base = anon_rss()


def room() -> int | None:
    """Bytes the running task may still add; None without a budget."""
    if _budget <= 0:
        return None
    return _budget - (0 if _base is None else max(0, anon_rss() - _base))
