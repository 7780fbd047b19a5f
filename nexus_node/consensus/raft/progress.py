"""What a leader knows about each follower's log (Figure 2 ``nextIndex`` / ``matchIndex``)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(slots=True)
class Progress:
    """Replication state of one member, kept by the leader.

    Two modes, as in etcd-io/raft: while *probing* the leader sends one MsgApp at a time and waits
    for its answer (or the next heartbeat answer) before sending another, because it does not yet
    know where the follower's log matches its own; once an append succeeds it *replicates*,
    sending new entries as soon as they exist and advancing ``next`` optimistically. Any
    rejection drops back to probing from ``match + 1``.

    Attributes:
        match: Highest index known to be replicated on the member.
        next: Index of the next entry to send.
        probing: Whether in probe mode (see above).
        paused: In probe mode, an append is in flight; wait before sending another.
        recent_active: Heard from since the last CheckQuorum round (thesis §6.2).
        answer_due: An append that the member will answer went out since the last heartbeat
            round; the next round skips this member (see ``Raft._bcast_heartbeat``).
        deferred: Entries the member lacks were left unsent on purpose: a follower's write
            went first to that follower alone (see ``Raft._write_targets``). The member gets
            them with the next append it is sent, or at its next heartbeat's answer.
        stored_commit: The highest ``MsgApp.stored_commit`` sent to the member: once it stores
            that message it commits that far by itself, untold.
        pending_snapshot: The index of the snapshot sent to the member because it lacks entries
            this leader no longer holds (0: none). Nothing else is sent to it until it answers
            for that index or the driver reports the transfer done or failed.
    """

    match: int = 0
    next: int = 1
    probing: bool = True
    paused: bool = False
    recent_active: bool = False
    answer_due: bool = False
    deferred: bool = False
    stored_commit: int = 0
    pending_snapshot: int = 0

    def update(self, index: int) -> bool:
        """Records a successful append up to ``index``. Returns whether ``match`` advanced."""
        self.paused = False
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        if self.probing:
            self.probing = False
            self.next = index + 1
        return True

    def reset_probe(self) -> None:
        """Falls back to probing right after what is known to match."""
        self.probing = True
        self.paused = False
        self.next = self.match + 1
