"""Who founds a cluster, who joins, and how the coordinator shapes the voter set. Pure logic.

Forming (a node with an empty log):

* a peer that answers Hello as a *member* means a cluster exists: join it (through its leader);
* otherwise the node with the smallest id among those that answered founds the cluster, once it
  has listened for ``window`` seconds (so nodes started together find each other first); the
  others keep asking until it is a member, then join. A node with no peers to ask founds at once.

Rejoining (a node with a log that hears of no leader): see :func:`rejoin_target`.

Two nodes that cannot see each other during their windows both found clusters; they stay two
clusters (logs cannot be merged). Give every node the same ``--seeds`` to rule that out.

Shaping (on the coordinator, one change at a time): the voters are the odd number
``min(--voters, healthy members)`` rounded down to odd — three voters survive one loss, five
survive two; an even count survives no more than the odd count below it and needs more
acknowledgements per commit. So a 2-node cluster has one voter and one non-voter: it survives
losing the non-voter only. A voter silent past ``voter_timeout`` is demoted when a healthy
non-voter can take its place; a caught-up healthy non-voter is promoted while voters are short;
a non-voter silent past ``remove_after`` is removed.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Mapping, Sequence

from nexus_node.consensus.raft import Membership


class Formation(enum.Enum):
    WAIT = "wait"
    JOIN = "join"
    FOUND = "found"


@dataclasses.dataclass(frozen=True)
class HelloAnswer:
    """What one peer said to this node's Hello."""

    node_id: str
    address: str
    member: bool
    leader_id: str = ""
    leader_address: str = ""
    members: frozenset[str] = frozenset()   # the members of its cluster, as it knows them


def formation_step(self_id: str, answers: Sequence[HelloAnswer], elapsed: float, window: float,
                   peers_configured: bool) -> tuple[Formation, str]:
    """The next step of a node with an empty log.

    Returns:
        ``(FOUND, "")``, ``(WAIT, "")`` or ``(JOIN, address)`` — the address to send Join to
        (the leader's when a member named it, else the member's own; it forwards).
    """
    members = [a for a in answers if a.member]
    if members:
        led = [a for a in members if a.leader_address]
        target = led[0].leader_address if led else members[0].address
        return Formation.JOIN, target
    if not peers_configured:
        return Formation.FOUND, ""
    if any(a.node_id < self_id for a in answers):
        return Formation.WAIT, ""   # that node founds; join it once it is a member
    return (Formation.FOUND, "") if elapsed >= window else (Formation.WAIT, "")


def rejoin_target(self_id: str, own_members: frozenset[str], answers: Sequence[HelloAnswer]) -> str:
    """Where a node that hears from no leader should ask to join again, or "" to keep waiting.

    A peer that is a member and names a leader, in a cluster that does not list this node but
    does list one of the members this node knows (``own_members``: so it is this node's
    cluster, gone on without it, not another one that happens to share its name and token),
    means it was forced into a new configuration or this node was removed: this node joins
    again, as a new non-voter, through that leader. A cluster that still lists it only lacks
    a quorum (or a leader, for now): wait.
    """
    others = own_members - {self_id}
    for a in answers:
        if a.member and a.leader_address and self_id not in a.members and a.members & others:
            return a.leader_address
    return ""


def desired_voters(healthy_members: int, target: int) -> int:
    """The largest odd number ≤ both ``target`` and ``healthy_members`` (at least 1)."""
    n = max(1, min(target, healthy_members))
    return n if n % 2 == 1 else n - 1


@dataclasses.dataclass(frozen=True)
class MemberHealth:
    """The coordinator's view of one member."""

    silent_for: float     # seconds since the coordinator last heard from it (0: itself)
    caught_up: bool       # holds the log up to about the coordinator's commit index


#: How far behind the coordinator's commit index a member may be and still count as caught up.
CAUGHT_UP_SLACK = 64


def member_health(now: float, heard: float | None, leader_since: float, match: int,
                  commit: int) -> MemberHealth:
    """The coordinator's view of one other member.

    Args:
        now: The clock (monotonic seconds).
        heard: When the coordinator last heard from it (None: never).
        leader_since: When the coordinator took over: a new leader has not had time to hear
            from everyone, so silence counts from then.
        match: How much of the log it has acknowledged to this leader (0: nothing yet).
        commit: The coordinator's commit index.
    """
    since = max(heard or 0.0, leader_since)
    # Caught up only once it has acknowledged this leader's log: a member that never answered
    # (dead since before this leader took over) must not look caught up because the log is
    # short, or it could be promoted into a quorum it cannot take part in.
    return MemberHealth(now - since if since else math.inf,
                        match > 0 and match >= commit - CAUGHT_UP_SLACK)


def next_change(membership: Membership, leader: str, health: Mapping[str, MemberHealth],
                target_voters: int, voter_timeout: float,
                remove_after: float = math.inf) -> Membership | None:
    """The one membership change the coordinator should make now, or None.

    In order: a silent voter gives its seat to a ready non-voter; a ready non-voter is
    promoted while voters are short; a non-voter silent for ``remove_after`` seconds is
    removed (it holds a blob keeper's place and is sent heartbeats for nothing; if it comes
    back, it finds the cluster no longer lists it and joins again).

    Members missing from ``health`` count as silent forever.
    """
    def healthy(node: str) -> bool:
        h = health.get(node)
        return node == leader or (h is not None and h.silent_for < voter_timeout)

    def ready(node: str) -> bool:
        h = health.get(node)
        return healthy(node) and h is not None and h.caught_up

    candidates = sorted(n for n in membership.learners if ready(n))
    silent_voters = sorted(v for v in membership.voters if v != leader and not healthy(v))
    if silent_voters and candidates:
        v = silent_voters[0]
        return Membership(membership.voters - {v}, membership.learners | {v})
    want = desired_voters(sum(healthy(n) for n in membership.members), target_voters)
    if len(membership.voters) < want and candidates:
        n = candidates[0]
        return Membership(membership.voters | {n}, membership.learners - {n})
    gone = sorted(n for n in membership.learners if remove_after < math.inf
                  and ((h := health.get(n)) is None or h.silent_for >= remove_after))
    if gone:
        return Membership(membership.voters, membership.learners - {gone[0]})
    return None
