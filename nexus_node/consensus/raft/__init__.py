"""Raft consensus as a pure, synchronous state machine (etcd-io/raft's design, in Python).

No sockets, clocks, threads or unseeded randomness: a :class:`RawNode` is fed :meth:`~RawNode.tick`
and :meth:`~RawNode.step` and answers with a :class:`Ready` (state to persist, messages to send,
committed entries to apply). The asyncio driver that connects it to gRPC, timers and SQLite is
built separately; :class:`RawNode`'s docstring states the order in which it must handle a Ready.

Built:
    * leader election with randomized timeouts (§5.2), pre-vote (thesis §9.6), CheckQuorum and
      the leader lease on votes (thesis §6.2, §4.2.3);
    * log replication with the consistency check and conflict truncation (§5.3), fast
      backtracking by term, commitment only of current-term entries by counting (§5.4.2), a
      no-op entry at the start of each term (§8);
    * voters and learners; single-server membership changes through CONFIG entries, in force
      as soon as they are in the log (thesis §4.1), one at a time, and only after the leader
      has committed an entry of its own term;
    * leadership transfer with MsgTimeoutNow (thesis §3.10), for a graceful leave.

    * snapshots and log compaction (thesis ch. 5): the driver saves the state machine at an
      applied index (:meth:`RawNode.snapshot_meta`, ``Storage.create_snapshot``) and drops the
      entries before it (``compact``); a follower that lacks dropped entries is sent
      :class:`MsgSnap` and installs it from :attr:`Ready.snapshot`.

Not built (yet): joint consensus, ReadIndex/lease reads (reads go through the log), flow control
beyond one-probe-at-a-time and capped MsgApp batches.
"""

from .core import NotLeader, ProposalDropped, Raft, RaftConfig, Role
from .log import LogDiverged
from .membership import InvalidConfigChange, Membership
from .messages import (
    Entry,
    EntryType,
    HardState,
    Message,
    MsgApp,
    MsgAppResp,
    MsgHeartbeat,
    MsgHeartbeatResp,
    MsgPreVote,
    MsgPreVoteResp,
    MsgSnap,
    MsgTimeoutNow,
    MsgVote,
    MsgVoteResp,
    NodeId,
    SnapshotMeta,
    message_from_dict,
    message_to_dict,
)
from .node import RawNode, Ready, SoftState, Status, bootstrap, force_new_cluster
from .storage import Compacted, MemoryStorage, Storage

__all__ = [
    "Compacted", "Entry", "EntryType", "HardState", "InvalidConfigChange", "LogDiverged", "MemoryStorage", "Membership",
    "Message", "MsgApp", "MsgAppResp", "MsgHeartbeat", "MsgHeartbeatResp", "MsgPreVote",
    "MsgPreVoteResp", "MsgSnap", "MsgTimeoutNow", "MsgVote", "MsgVoteResp", "NodeId", "NotLeader",
    "ProposalDropped", "Raft", "RaftConfig", "RawNode", "Ready", "Role", "SnapshotMeta", "SoftState", "Status",
    "Storage", "bootstrap", "force_new_cluster", "message_from_dict", "message_to_dict",
]
