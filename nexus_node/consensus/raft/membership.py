"""Cluster membership: voters and learners, quorums, and the one-change-at-a-time rule.

A membership travels in the log as a CONFIG entry holding the *whole* new membership (not a
delta), so a node learns its configuration by reading the latest CONFIG entry in its log.

Which configuration is in force: the latest one in the log, committed or not (Raft thesis §4.1:
"a server always uses the latest configuration in its log"). The leader therefore starts
counting the new voters as soon as it appends the entry, and a follower whose uncommitted
CONFIG entry is truncated by a new leader reverts to the previous one (:class:`~.log.RaftLog`
keeps the list of CONFIG entries for that).

Voters elect and count for commitment. Learners (non-voting members) receive the log but never
vote, never campaign and never count toward a quorum.

Changes are single-server (thesis §4.1): the voter sets of two successive configurations differ
by at most one node, so every majority of the old set overlaps every majority of the new one.
Learner changes do not touch quorums and are checked only for the one-node-per-change rule too,
to keep each change small and easy to reason about.
"""

from __future__ import annotations

import dataclasses
import json

from .messages import NodeId


class InvalidConfigChange(ValueError):
    """A proposed membership breaks the single-server rule or is malformed."""


@dataclasses.dataclass(frozen=True, slots=True)
class Membership:
    """Voters and learners of one configuration. A node is never both."""

    voters: frozenset[NodeId] = frozenset()
    learners: frozenset[NodeId] = frozenset()

    def __post_init__(self) -> None:
        both = self.voters & self.learners
        if both:
            raise InvalidConfigChange(f"nodes {sorted(both)} are both voter and learner")

    @classmethod
    def of(cls, voters: "set[NodeId] | list[NodeId] | tuple[NodeId, ...]",
           learners: "set[NodeId] | list[NodeId] | tuple[NodeId, ...]" = ()) -> "Membership":
        """Builds a membership from any iterables of ids."""
        return cls(frozenset(voters), frozenset(learners))

    @property
    def members(self) -> frozenset[NodeId]:
        """Voters and learners together: everyone the leader replicates to."""
        return self.voters | self.learners

    def quorum(self) -> int:
        """Votes (or matching logs) needed among voters: a strict majority."""
        return len(self.voters) // 2 + 1

    def has_quorum(self, ids: "set[NodeId] | frozenset[NodeId]") -> bool:
        """Whether ``ids`` include a majority of the voters (learners in ``ids`` do not count)."""
        return len(self.voters & ids) >= self.quorum()

    def committed_index(self, match: "dict[NodeId, int]") -> int:
        """The highest index stored on a majority of voters, given each voter's match index.

        Voters missing from ``match`` count as 0. Returns 0 with no voters.
        """
        if not self.voters:
            return 0
        indexes = sorted((match.get(v, 0) for v in self.voters), reverse=True)
        return indexes[self.quorum() - 1]

    def encode(self) -> bytes:
        """The bytes stored in a CONFIG entry (sorted JSON, so equal memberships are equal bytes)."""
        return json.dumps({"voters": sorted(self.voters), "learners": sorted(self.learners)},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> "Membership":
        """Inverse of :meth:`encode`.

        Raises:
            InvalidConfigChange: ``data`` is not an encoded membership.
        """
        try:
            raw = json.loads(data)
            return cls(frozenset(map(str, raw["voters"])), frozenset(map(str, raw["learners"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidConfigChange(f"bad membership entry: {exc}") from exc


def check_single_change(old: Membership, new: Membership) -> None:
    """Checks that ``new`` differs from ``old`` by one node at most (thesis §4.1).

    Allowed: add a voter or a learner, remove one, promote a learner, demote a voter.

    Raises:
        InvalidConfigChange: more than one node changes, or the change leaves no voter.
    """
    changed = (old.voters ^ new.voters) | (old.learners ^ new.learners)
    if len(changed) > 1:
        raise InvalidConfigChange(
            f"one membership change at a time: {sorted(changed)} would all change")
    if not new.voters:
        raise InvalidConfigChange("a configuration needs at least one voter")
