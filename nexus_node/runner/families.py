"""Which library family a task loads in its runner, and when a node keeps one family per
runner process.

A runner imports lazily: torch with the first network it trains or serves, pandas and
scikit-learn with the first preparation or tree. Left alone, a runner that has run both
kinds holds both (measured: about 250 MB resident for torch alone once warmed up, 366 MB with
pandas and scikit-learn too, before any data), on top of the node.
That is fine on a machine with gigabytes per slot and too much on a 512 MB one, so a node
whose memory per slot is short (:func:`one_family_per_runner`) restarts a slot's idle runner
when the next task needs the other family. The restart costs a process start (about a
second for torch, less for the table libraries) only when the family changes.
"""

from __future__ import annotations

from typing import Any, Mapping

NETWORKS = "networks"   # torch: MLP trials, an MLP's final refit
TABLES = "tables"       # pandas and scikit-learn: preparation, tree trials, a tree's final refit
ANY = "any"             # whatever the task needs, loaded as it goes

#: Below this much memory per slot (node and runners together) a node keeps one family per
#: runner: a runner holding torch, pandas and scikit-learn plus a trial's data does not fit.
ONE_FAMILY_BELOW_MB_PER_SLOT = 1024


def family_of(task: Mapping[str, Any]) -> str:
    """The family ``task`` (a runner request) loads; :data:`ANY` when it cannot be told."""
    kind = task.get("task")
    if kind in ("prepare", "check"):
        return TABLES
    if kind == "refit":
        configs = [(task.get("candidate") or {}).get("params") or {}]
    elif kind in ("trial", "finalize"):
        # A finalize given its members fits only those without a file; reading a network's
        # file needs torch, a tree's numpy alone (the best trial is fitted only if refits fail).
        configs = [] if kind == "finalize" and task.get("chosen") else [task.get("params") or {}]
        if kind == "finalize":   # an ensemble may refit members of both families
            configs += [c.get("params") or {} for c in task.get("library") or []]
            configs += _finalize_chosen(task)
    else:
        return ANY   # select: numpy alone
    kinds = {TABLES if p.get("family", "mlp") == "gbt" else NETWORKS for p in configs}
    if not kinds:   # a finalize that reads trees' files alone: numpy, and pandas to write
        return TABLES
    return kinds.pop() if len(kinds) == 1 else ANY


def _finalize_chosen(task: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    configs = []
    for c in task.get("chosen") or []:
        candidate = c.get("candidate") or {}
        params = candidate.get("params") or {}
        refitted = candidate.get("member_path") or candidate.get("member_sha256")
        if not refitted or params.get("family", "mlp") != "gbt":
            configs.append(params)
    return configs


def one_family_per_runner(memory_mb: int, slots: int) -> bool:
    """Whether a node with ``memory_mb`` for itself and its runners keeps one family per
    runner."""
    return memory_mb < ONE_FAMILY_BELOW_MB_PER_SLOT * max(1, slots)


def slots_for_memory(memory_mb: int) -> int:
    """The most slots ``memory_mb`` holds: a runner with one family and a trial's data takes
    about 400 MB, the node about 100 MB."""
    return max(1, (memory_mb - 100) // 400)
