"""Checks on every Raft message from a peer, before it reaches the core or the disk.

A peer's bytes may hold anything: a term of 2**63 that SQLite cannot store, a string where an
index belongs, an entry of an unknown type, a message claiming to come from a node that is not
in the cluster. The core trusts its inputs (a term compared with a string would crash the task
that owns it), so everything is checked here, by pure functions that the transport
(:mod:`nexus_node.consensus.transport`), the core itself (defence in depth: :meth:`Raft.step
<.core.Raft.step>` drops what fails) and the seeded simulation's adversary all call: the
simulation exercises the very path a real peer's message takes.

* :func:`decode_message`: JSON text to a checked :class:`~.messages.Message`.
* :func:`check_message`: types and ranges of every field and entry (no application data).
* :func:`sender_refusal`: whether the sender is a member of this node's configuration.

Application data (the commands in NORMAL entries) is not checked here: the leader checks a
command when it is proposed (``ReplicatedState.validate``, ``check_forwarded``), and a
follower takes whatever its leader replicates, since those entries may already be committed
(a joining node replays the log from index 1) and ``ReplicatedState.apply`` skips a malformed
or unknown command identically on every node. Refusing one would block every joiner for good.

Every failure is :class:`InvalidMessage` (a ``ValueError``) whose text says what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable

from .membership import InvalidConfigChange, Membership
from .messages import (
    MAX_ID_LEN,
    MAX_INDEX,
    MAX_TERM,
    MESSAGE_TYPES,
    Entry,
    EntryType,
    Message,
    MsgApp,
    MsgHeartbeat,
    MsgPreVote,
    MsgPreVoteResp,
    MsgSnap,
    MsgVote,
    MsgVoteResp,
    message_from_dict,
)


class InvalidMessage(ValueError):
    """A peer's message is malformed or out of range; it must be dropped."""


# The fields of each message class that are terms, indexes, node ids or flags. Worked out once
# from the dataclasses' annotations (strings: messages.py uses postponed annotations), so a
# field added to a message is checked without touching this module.
_TERMS = {"term", "prev_term", "last_term", "hint_term", "snap_term"}
_FIELD_KINDS = {"int": "int", "NodeId": "id", "bool": "bool"}
_SCALARS: dict[type, tuple[tuple[str, str], ...]] = {}
for _cls in MESSAGE_TYPES.values():
    _SCALARS[_cls] = tuple((f.name, _FIELD_KINDS[str(f.type)]) for f in dataclasses.fields(_cls)
                           if str(f.type) in _FIELD_KINDS)


def _check_int(owner: str, name: str, value: object) -> None:
    # bool is an int subclass: a term of True is as wrong as a term of "1".
    if type(value) is not int:
        raise InvalidMessage(f"{owner}.{name} must be an int, not {type(value).__name__}")
    limit = MAX_TERM if name in _TERMS else MAX_INDEX
    if not 0 <= value <= limit:
        raise InvalidMessage(f"{owner}.{name} {value} is out of range [0, {limit}]")


def check_node_id(owner: str, name: str, value: object) -> None:
    """Checks a node id: a non-empty printable string of at most :data:`MAX_ID_LEN` characters.

    Raises:
        InvalidMessage: it is not.
    """
    if type(value) is not str or not value or len(value) > MAX_ID_LEN or not value.isprintable():
        raise InvalidMessage(f"{owner}.{name} must be a non-empty printable string of at most "
                             f"{MAX_ID_LEN} characters, not {value!r:.40}")


def check_entry(entry: object, owner: str = "entry") -> None:
    """Checks one log entry's fields (not its application data).

    Raises:
        InvalidMessage: a field has the wrong type or is out of range; a NOOP carries data; a
            CONFIG entry is not a membership of valid node ids.
    """
    if type(entry) is not Entry:
        raise InvalidMessage(f"{owner} is not an entry")
    _check_int(owner, "index", entry.index)
    _check_int(owner, "term", entry.term)
    if entry.index == 0:
        raise InvalidMessage(f"{owner} has index 0 (the log starts at 1)")
    if type(entry.type) is not EntryType:
        raise InvalidMessage(f"{owner}.type must be an EntryType")
    if type(entry.data) is not bytes:
        raise InvalidMessage(f"{owner}.data must be bytes")
    pid = entry.proposal_id
    if pid is not None and (type(pid) is not str or not pid or len(pid) > MAX_ID_LEN):
        raise InvalidMessage(f"{owner}.proposal_id must be None or a non-empty string of at most "
                             f"{MAX_ID_LEN} characters")
    if entry.type is EntryType.NOOP and entry.data:
        raise InvalidMessage(f"{owner} is a NOOP carrying data")
    if entry.type is EntryType.CONFIG:
        # The core decodes every CONFIG entry it appends (RaftLog.append): undecodable data
        # would raise there, in the consensus loop.
        try:
            config = Membership.decode(entry.data)
        except InvalidConfigChange as exc:
            raise InvalidMessage(f"{owner}: {exc}") from None
        for node in config.members:
            check_node_id(owner, "member", node)


def check_message(m: object) -> None:
    """Checks every field of a message: types, ranges, and the shape of an append's entries.

    An append's entries must follow ``prev_index`` one by one, with terms that never decrease,
    from ``prev_term`` up to the message's term (a leader only sends entries of its log, whose
    terms grow along it, §5.3): the core assumes as much and would fail an assertion otherwise.

    Raises:
        InvalidMessage: the message is malformed or out of range.
    """
    cls = type(m)
    scalars = _SCALARS.get(cls)
    if scalars is None:
        raise InvalidMessage(f"{cls.__name__} is not a raft message")
    owner = cls.__name__
    for name, kind in scalars:
        value = getattr(m, name)
        if kind == "int":
            _check_int(owner, name, value)
        elif kind == "id":
            check_node_id(owner, name, value)
        elif type(value) is not bool:
            raise InvalidMessage(f"{owner}.{name} must be a bool, not {type(value).__name__}")
    if cls is MsgApp:
        _check_entries(m)  # type: ignore[arg-type]
    elif cls is MsgSnap:
        _check_snapshot(m)  # type: ignore[arg-type]


#: Longest membership a snapshot message may carry (thousands of node ids).
MAX_CONFIG_CHARS = 1 << 20


def _check_snapshot(m: MsgSnap) -> None:
    if m.snap_index == 0:
        raise InvalidMessage("MsgSnap.snap_index is 0 (a snapshot stands for entries from 1)")
    if m.snap_term > m.term:
        raise InvalidMessage(f"MsgSnap.snap_term {m.snap_term} is above its term {m.term}")
    if type(m.config) is not str or len(m.config) > MAX_CONFIG_CHARS:
        raise InvalidMessage(f"MsgSnap.config must be a membership's JSON text of at most "
                             f"{MAX_CONFIG_CHARS} characters")
    try:
        config = Membership.decode(m.config.encode())
    except InvalidConfigChange as exc:
        raise InvalidMessage(f"MsgSnap.config: {exc}") from None
    if not config.voters:
        raise InvalidMessage("MsgSnap.config has no voter")
    for node in config.members:
        check_node_id("MsgSnap", "member", node)


def _check_entries(m: MsgApp) -> None:
    if type(m.entries) is not tuple:
        raise InvalidMessage("MsgApp.entries must be a tuple of entries")
    expect, low = m.prev_index + 1, m.prev_term
    for pos, e in enumerate(m.entries):
        check_entry(e, f"MsgApp.entries[{pos}]")
        if e.index != expect:
            raise InvalidMessage(f"MsgApp.entries[{pos}] has index {e.index}, not {expect}")
        if not low <= e.term <= m.term:
            raise InvalidMessage(f"MsgApp.entries[{pos}] has term {e.term}, outside "
                                 f"[{low}, {m.term}]")
        expect, low = expect + 1, e.term
    if m.prev_term > m.term:
        raise InvalidMessage(f"MsgApp.prev_term {m.prev_term} is above its term {m.term}")


def decode_message(raw: bytes | str | dict[str, Any]) -> Message:
    """A peer's encoded message (JSON text, or its parsed dict), decoded and checked.

    Raises:
        InvalidMessage: not JSON, not an encoded message, or :func:`check_message` refuses it.
    """
    try:
        parsed = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
        if not isinstance(parsed, dict):
            raise InvalidMessage("a raft message is a JSON object")
        message = message_from_dict(parsed)
    except InvalidMessage:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise InvalidMessage(f"undecodable raft message: {type(exc).__name__}: {exc}") from None
    check_message(message)
    return message


#: Elections are open to every sender (see :func:`sender_refusal`).
_ELECTION = (MsgPreVote, MsgPreVoteResp, MsgVote, MsgVoteResp)


def sender_refusal(src: str, members: Iterable[str], message: object = None,
                   orphaned: bool = False, leader: str | None = None) -> str | None:
    """Why a message from ``src`` is refused, or None: only members speak consensus, but for
    elections and a lost node's new leader.

    Elections are never screened (thesis §4.1: servers process incoming RPCs without consulting
    their current configurations). A voter must answer a candidate that its configuration does
    not know yet: voters {A,B,C}, D added and promoted on A,B,D, C still at {A,B,C}, A gone for
    good: D's log is the longest, so only D can win, and it needs C's vote (refusing it left the
    cluster without a leader for ever, with a live quorum). Taking a stranger's (pre-)vote
    requests is safe and cannot disrupt: a pre-vote changes nothing anywhere, a vote request is
    ignored while the receiver hears its leader (the leader lease in ``Raft.step``, thesis
    §4.2.3), and a vote only counts for a candidate whose own configuration names the voter
    (``Raft._poll``). A non-member's answer counts for nothing in the candidate's tally either.
    So the screen cannot make the cluster less live, and a forger in a non-member's name gets no
    more from an election than it would in a member's name (the peer secret keeps both out).
    The one exception is a transfer's vote request (``MsgVote.transfer``), which overrides the
    lease: refused from a non-member unless the receiver is orphaned.

    Args:
        src: The sender's node id.
        members: Voters and learners of this node's configuration. Empty: the node has no
            configuration yet (an empty log: a node being added, which must take its leader's
            first appends), and accepts any sender.
        message: The message, if the question is about one (None: forwarded writes, a work
            stream).
        orphaned: The receiver heard no leader for a long while (``Raft.orphaned``): then an
            append or heartbeat from a non-member is taken, since its leader may be one that
            a configuration it has not received yet added (thesis §4.1).
        leader: The leader the receiver follows in its term (``Raft.term_leader``): its
            appends and heartbeats are taken once it was (until its configuration arrives).
    """
    members = frozenset(members)
    if not members or src in members:
        return None
    if isinstance(message, _ELECTION):
        if isinstance(message, MsgVote) and message.transfer and not orphaned:
            # A leadership transfer's vote request overrides the lease: only the leader's
            # chosen voter sends one, and a voter that hears its leader knows that voter
            # (a lagging one that does not is outvoted; the target campaigns again normally).
            return (f"node {src!r} is not a member of this cluster and asks for a transfer's "
                    f"vote, which ignores the leader lease")
        return None
    if (orphaned or src == leader) and isinstance(message, (MsgApp, MsgHeartbeat, MsgSnap)):
        return None
    return f"node {src!r} is not a member of this cluster (members: {', '.join(sorted(members))})"
