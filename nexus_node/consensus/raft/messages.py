"""Log entries, hard state and the peer messages of the Raft core.

Everything here is a frozen dataclass of plain values (ints, strings, bytes, tuples), so a
message can be turned into a JSON-able dict (:func:`message_to_dict`) or mapped field by field
onto a protobuf message by the driver. No pickle anywhere: a peer's bytes are never code.

Message names follow etcd-io/raft (``MsgApp``, ``MsgVote``...) so the paper, the thesis and
etcd's code can be read side by side with this package.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
from typing import Any, Union

#: A node id: stable across restarts (the driver keeps it in the data dir).
NodeId = str

#: Terms and log indexes a peer may send (see :mod:`.validate`). SQLite stores them as 64-bit
#: INTEGERs: a term of 2**63 written to disk raised OverflowError in every node it reached
#: (issue 18). 2**62 leaves room for every ``term + 1`` the core computes and is still beyond
#: anything an honest cluster reaches (a billion elections a second for 146 years).
MAX_TERM = 2**62
MAX_INDEX = 2**62
#: Longest node id and proposal id a peer may send (ours are ``node-`` + 8 hex digits and 32
#: hex digits).
MAX_ID_LEN = 128


class EntryType(enum.Enum):
    """What a log entry carries."""

    NORMAL = "normal"
    """Application data (a proposal)."""
    NOOP = "noop"
    """Appended by every new leader so that it commits an entry of its own term (§8, thesis §6.4)."""
    CONFIG = "config"
    """A membership: the full voter and learner sets in ``data`` (see :mod:`.membership`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One log entry.

    Attributes:
        index: Position in the log, from 1.
        term: Term of the leader that created the entry.
        type: What ``data`` is.
        data: Application bytes (NORMAL), empty (NOOP) or the encoded membership (CONFIG).
        proposal_id: The proposer's unique id for this write, if any. The state machine uses it to
            apply a write retried across a failover only once (Raft thesis §6.3).
    """

    index: int
    term: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""
    proposal_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message of the same :class:`~.ready.Ready` is sent.

    Attributes:
        term: Latest term this node has seen (Figure 2 ``currentTerm``).
        vote: Candidate voted for in ``term`` (Figure 2 ``votedFor``), or None.
        commit: Highest index known committed. Not required for safety (the paper keeps it
            volatile) but persisting it lets a restarted node apply committed entries at once.
    """

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


EMPTY_HARD_STATE = HardState()


@dataclasses.dataclass(frozen=True, slots=True)
class MsgApp:
    """AppendEntries (§5.3): entries after ``(prev_index, prev_term)``, plus the leader's commit.

    ``commit_only`` marks an empty append sent only to spread a new commit index: the follower
    checks and commits as for any append but answers only a rejection, since the leader learns
    nothing from a success (it tracks the follower through the answers to entries).

    ``stored_commit``: the leader has its log up to here on its own disk, and its copy with the
    receiver's makes a quorum of its voters: a receiver that stores the message's entries may
    commit up to here without waiting to hear it (0: nothing of the kind). See
    ``Raft._stored_commit``.
    """

    src: NodeId
    dst: NodeId
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    commit_only: bool = False
    stored_commit: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class MsgAppResp:
    """Answer to :class:`MsgApp`.

    On success ``index`` is the last index the follower now matches. On rejection ``index`` is the
    rejected ``prev_index`` and ``(hint_index, hint_term)`` tell the leader where to probe next:
    the follower's last index ``<= prev_index`` whose term is ``<= prev_term`` (fast backtracking,
    the optimisation sketched at the end of §5.3, as etcd-io/raft does it).
    """

    src: NodeId
    dst: NodeId
    term: int
    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class MsgVote:
    """RequestVote (§5.2). ``transfer`` marks a campaign started by :class:`MsgTimeoutNow`, which
    voters grant even while they believe a leader is alive (thesis §3.10, §4.2.3)."""

    src: NodeId
    dst: NodeId
    term: int
    last_index: int
    last_term: int
    transfer: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class MsgVoteResp:
    """Answer to :class:`MsgVote`."""

    src: NodeId
    dst: NodeId
    term: int
    reject: bool


@dataclasses.dataclass(frozen=True, slots=True)
class MsgPreVote:
    """Pre-vote (thesis §9.6): "would you vote for me at ``term``?" ``term`` is the sender's term
    plus one; neither side changes its term or vote for it."""

    src: NodeId
    dst: NodeId
    term: int
    last_index: int
    last_term: int


@dataclasses.dataclass(frozen=True, slots=True)
class MsgPreVoteResp:
    """Answer to :class:`MsgPreVote`: granted with the asked term, rejected with the voter's."""

    src: NodeId
    dst: NodeId
    term: int
    reject: bool


@dataclasses.dataclass(frozen=True, slots=True)
class MsgHeartbeat:
    """Leader heartbeat (§5.2). ``commit`` is capped at what the follower is known to match."""

    src: NodeId
    dst: NodeId
    term: int
    commit: int


@dataclasses.dataclass(frozen=True, slots=True)
class MsgHeartbeatResp:
    """Answer to :class:`MsgHeartbeat`; proves the follower is alive (CheckQuorum, thesis §6.2)."""

    src: NodeId
    dst: NodeId
    term: int


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What a snapshot of the state machine stands for (the thesis' "last included index and
    term", §5.1 of chapter 5, with its configuration). The state itself is the driver's: the
    core never holds it.

    Attributes:
        index: The last log entry whose effect the snapshot holds; the entries up to it may be
            dropped from the log.
        term: That entry's term (the consistency check of the append after it needs it).
        config: The membership in force at ``index`` (:meth:`~.membership.Membership.encode`
            as text): the entries that set it may be gone.
    """

    index: int
    term: int
    config: str


@dataclasses.dataclass(frozen=True, slots=True)
class MsgSnap:
    """InstallSnapshot (thesis §5.3): "your log lacks entries I no longer hold; here is the state
    they built, up to ``snap_index``". The core sends and takes only the metadata: the driver
    moves the snapshot itself (chunked, checksummed) and steps this message into the receiver's
    core only once the receiver holds the whole snapshot, verified. The receiver answers with a
    :class:`MsgAppResp` for the index it then holds, as to an append.
    """

    src: NodeId
    dst: NodeId
    term: int
    snap_index: int
    snap_term: int
    config: str


@dataclasses.dataclass(frozen=True, slots=True)
class MsgTimeoutNow:
    """Leadership transfer (thesis §3.10): "start an election now, without pre-vote"."""

    src: NodeId
    dst: NodeId
    term: int


Message = Union[
    MsgApp,
    MsgAppResp,
    MsgVote,
    MsgVoteResp,
    MsgPreVote,
    MsgPreVoteResp,
    MsgHeartbeat,
    MsgHeartbeatResp,
    MsgTimeoutNow,
    MsgSnap,
]

MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (MsgApp, MsgAppResp, MsgVote, MsgVoteResp, MsgPreVote, MsgPreVoteResp,
                MsgHeartbeat, MsgHeartbeatResp, MsgTimeoutNow, MsgSnap)
}


# Field names per message class, looked up once: every message to or from a peer is encoded.
_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in MESSAGE_TYPES.values()}


def entry_to_dict(entry: Entry) -> dict[str, Any]:
    """Returns a JSON-able dict for ``entry`` (``data`` as base64)."""
    out: dict[str, Any] = {
        "index": entry.index,
        "term": entry.term,
        "type": entry.type.value,
        "data": base64.b64encode(entry.data).decode("ascii"),
    }
    if entry.proposal_id is not None:
        out["proposal_id"] = entry.proposal_id
    return out


def entry_from_dict(raw: dict[str, Any]) -> Entry:
    """Inverse of :func:`entry_to_dict`.

    Raises:
        KeyError, ValueError, TypeError: ``raw`` is not an encoded entry.
    """
    # No int() here: a peer's "5", 5.7 or true is refused by validate.check_message, not
    # silently turned into an index.
    return Entry(
        index=raw["index"],
        term=raw["term"],
        type=EntryType(raw["type"]),
        data=base64.b64decode(raw["data"], validate=True),
        proposal_id=raw.get("proposal_id"),
    )


def message_to_dict(message: Message) -> dict[str, Any]:
    """Returns a JSON-able dict for ``message``, with its class name under ``"type"``."""
    cls = type(message)
    out: dict[str, Any] = {"type": cls.__name__}
    for name in _FIELDS[cls]:
        value = getattr(message, name)
        if name == "entries":
            value = [entry_to_dict(e) for e in value]
        out[name] = value
    return out


def message_from_dict(raw: dict[str, Any]) -> Message:
    """Inverse of :func:`message_to_dict`.

    Raises:
        KeyError, ValueError, TypeError: ``raw`` is not an encoded message.
    """
    cls = MESSAGE_TYPES.get(raw.get("type", ""))
    if cls is None:
        raise ValueError(f"unknown raft message type {raw.get('type')!r}")
    kwargs = {k: v for k, v in raw.items() if k != "type"}
    if "entries" in kwargs:
        kwargs["entries"] = tuple(entry_from_dict(e) for e in kwargs["entries"])
    return cls(**kwargs)  # type: ignore[no-any-return]
