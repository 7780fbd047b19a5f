"""Which running trials a new coordinator adopts, as a pure function of what the live nodes
claim, what the study records, and ``now`` (issue 22).

A coordinator's leases live in its memory. When it dies, the trials it had handed out go on
running on the nodes that are still alive, and each of those nodes names its trials in every
heartbeat (:class:`~nexus_node.work.messages.RunningTrial`). The next coordinator listens for
a short window, then adopts each trial that is still RUNNING in the replicated study and that
the node the study handed it to claims: the trial keeps running, its result counts once, and
its pruning and intermediate values carry on, because they live in the study. Only the trials
nobody adopts (those of the dead node) are failed as lost and run again.

A claim is refused (its node is told to cancel the task) when the trial already finished in
the study, when the study handed the trial to another node (a node cannot take over another's
trial by naming it), or when the same trial is claimed twice (one claim is adopted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping


@dataclass(frozen=True)
class Claim:
    """A node's heartbeat says it runs ``trial_number`` under ``lease_id``."""

    node_id: str
    lease_id: str
    trial_number: int
    seen_at: float   # the coordinator's clock at that node's latest heartbeat


@dataclass(frozen=True)
class StudyTrial:
    """A trial as the replicated study records it."""

    number: int
    running: bool
    node_id: str   # the node it was handed to ("" when the study does not say)


@dataclass(frozen=True)
class Adoption:
    """What to do with the claims: adopt one per trial, refuse the rest (with why)."""

    adopt: dict[int, Claim] = field(default_factory=dict)
    refuse: list[tuple[Claim, str]] = field(default_factory=list)


def adoption(claims: Iterable[Claim], trials: Mapping[int, StudyTrial], now: float, grace: float) -> Adoption:
    """Decides every claim (see the module docstring). A claim whose node has been silent for
    longer than ``grace`` is neither adopted nor refused: that node is dead, and its trials
    are failed as lost like every trial nobody adopts."""
    out = Adoption()
    by_trial: dict[int, list[Claim]] = {}
    for c in claims:
        if now - c.seen_at <= grace:
            by_trial.setdefault(c.trial_number, []).append(c)
    for number, group in sorted(by_trial.items()):
        group.sort(key=lambda c: (c.node_id, c.lease_id))
        t = trials.get(number)
        if t is None:
            out.refuse.extend((c, f"trial {number} is not in the job's study") for c in group)
            continue
        if not t.running:
            out.refuse.extend((c, f"trial {number} already finished in the study") for c in group)
            continue
        own = [c for c in group if c.node_id == t.node_id]
        out.refuse.extend((c, f"trial {number} was handed to node {t.node_id or '?'}, not to node {c.node_id}")
                          for c in group if c.node_id != t.node_id)
        if own:
            out.adopt[number] = own[0]
            out.refuse.extend((c, f"trial {number} is run under lease {own[0].lease_id} already") for c in own[1:])
    return out
