"""The replicated state machine: committed log entries in, deterministic effects out.

Every node applies the same committed entries in the same order (State Machine Safety, Raft
§5.4.3), so every node's :class:`ReplicatedState` goes through the same states. A command is a
NORMAL entry whose data is JSON ``{"kind": ..., "body": ...}``; each kind has one handler
(today the Optuna journal, :mod:`nexus_node.study.journal`; jobs, blob placement and the model
registry come later).

Duplicates: a client that lost an answer (a timeout, a failover) retries with the same proposal
id, and both copies may end up committed. Raft thesis §6.3 makes the state machine filter them:
the first entry carrying an id takes effect, later ones are no-ops that report the first one's
index. The seen ids are kept for the life of the log (no compaction yet, so the set grows with
it, as the log does); they are rebuilt on restart by replaying the log.

Fencing: a command may name the term its proposer leads in (``{"kind", "body", "term"}``, see
:func:`encode_command`). The coordinator's writes do: they are its decisions, valid only while it
leads. Such a command takes effect only in an entry of that very term, that is, only if the
leader of that term appended it (a Raft leader appends entries of its own term alone, §5.3);
in any other entry it is skipped on every node alike. A leader never takes a fenced command a
follower hands over (:meth:`ReplicatedState.check_forwarded`), so a fenced write that commits
was proposed by its own node while that node led in the term it names: a deposed coordinator's
late write, appended after it was re-elected in a later term or handed to another leader, does
nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Callable

from nexus_node.consensus.raft import Entry, EntryType

log = logging.getLogger(__name__)

#: A command handler: ``(body, index) -> result``. Must be deterministic and must not raise for
#: a well-formed body; it runs on the driver's task, so it must not block.
Handler = Callable[[Any, int], Any]
#: A command body's check: returns for a well-formed body, else raises ValueError saying what
#: is wrong. Pure and fast: it runs on the driver's task for every entry a peer sends.
Validator = Callable[[Any], None]
#: What a leader checks before it proposes a write that follower ``origin`` handed over:
#: ``(body, origin)``, raising ValueError when that node may not make that write (a follower
#: does not write the coordinator's records). Reads the applied state; runs on the loop.
ForwardCheck = Callable[[Any, str], None]

#: Longest command a peer may hand over or send in an entry (gRPC refuses larger messages
#: anyway; this keeps one command from being most of one).
MAX_COMMAND_BYTES = 8 << 20


def encode_command(kind: str, body: Any, term: int | None = None) -> bytes:
    """Encodes a command for :meth:`RaftDriver.propose <nexus_node.consensus.driver.RaftDriver.propose>`.

    Args:
        term: Fence the command to this term: it takes effect only if the node that proposes it
            leads in ``term`` when the leader appends it (see the module docstring), and it is
            never forwarded to another node. None: any node may propose it, through the leader.
    """
    command: dict[str, Any] = {"kind": kind, "body": body}
    if term is not None:
        command["term"] = term
    return json.dumps(command, separators=(",", ":")).encode()


def _is_term(v: object) -> bool:
    return type(v) is int and v >= 1


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of applying one entry.

    Attributes:
        index: Log index at which the command took effect (the first copy's, for a duplicate).
        proposal_id: The entry's proposal id, if any.
        result: What the handler returned (None for a duplicate or a skipped entry).
        duplicate: The proposal id had already taken effect; this entry changed nothing.
        fenced: The command was fenced to another term than the entry's; it changed nothing.
    """

    index: int
    proposal_id: str | None
    result: Any = None
    duplicate: bool = False
    fenced: bool = False


class ReplicatedState:
    """Dispatches committed entries to handlers by kind, applying each proposal id once.

    Not thread-safe: only the driver's task calls :meth:`apply`. Handlers that expose data to
    other threads (the journal) guard it themselves.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._validators: dict[str, Validator | None] = {}
        self._forward_checks: dict[str, ForwardCheck | None] = {}
        self._seen: dict[str, int] = {}
        self.applied_index = 0

    def register(self, kind: str, handler: Handler, validate: Validator | None = None,
                 forwarded: ForwardCheck | None = None) -> None:
        """Routes commands of ``kind`` to ``handler``.

        Args:
            validate: Checks a body before it is proposed or taken from a peer (see
                :meth:`validate`); None: any body of this kind is accepted.
            forwarded: Checks a body a follower handed over, on the leader (see
                :meth:`check_forwarded`); None: any follower may write any such body.

        Raises:
            ValueError: ``kind`` already has a handler.
        """
        if kind in self._handlers:
            raise ValueError(f"command kind {kind!r} already has a handler")
        self._handlers[kind] = handler
        self._validators[kind] = validate
        self._forward_checks[kind] = forwarded

    def _decode(self, data: bytes) -> tuple[str, Any, int | None]:
        if len(data) > MAX_COMMAND_BYTES:
            raise ValueError(f"command of {len(data)} bytes, over {MAX_COMMAND_BYTES}")
        try:
            command = json.loads(data)
        except (ValueError, RecursionError):
            raise ValueError("command is not JSON") from None
        if not isinstance(command, dict) or set(command) - {"term"} != {"kind", "body"}:
            raise ValueError('command is not {"kind": ..., "body": ...} (and an optional "term")')
        kind = command["kind"]
        if not isinstance(kind, str) or kind not in self._handlers:
            raise ValueError(f"unknown command kind {kind!r:.60}")
        term = command.get("term")
        if "term" in command and not _is_term(term):
            raise ValueError(f"a command's term is a whole number from 1, not {term!r:.40}")
        return kind, command["body"], term

    def validate(self, data: bytes) -> int | None:
        """Checks that ``data`` is a well-formed command of a registered kind; returns the term
        it is fenced to (None: not fenced).

        The leader checks every write before it proposes it, and a follower every entry a
        peer sends before it stores it: a malformed record committed once would be applied by
        every node from then on (``nexus jobs`` broke for good on a ``created_at`` of
        ``"yesterday"``, issue 18).

        Raises:
            ValueError: it is not; the message says what is wrong.
        """
        return self._validated(data)[2]

    def _validated(self, data: bytes) -> tuple[str, Any, int | None]:
        kind, body, term = self._decode(data)
        check = self._validators[kind]
        if check is not None:
            try:
                check(body)
            except ValueError as exc:
                raise ValueError(f"{kind}: {exc}") from None
            except (TypeError, KeyError, AttributeError) as exc:  # a validator's own slip
                raise ValueError(f"{kind}: malformed body ({type(exc).__name__}: {exc})") from None
        return kind, body, term

    def check_forwarded(self, data: bytes, origin: str) -> None:
        """The leader's check of a write follower ``origin`` handed over: :meth:`validate`,
        then the kind's ``forwarded`` check. A fenced write is never taken: it is valid only
        from the leader of its term, and only that node's own proposal proves it.

        Raises:
            ValueError: the write is malformed, fenced to a term, or ``origin`` may not make it.
        """
        kind, body, term = self._validated(data)
        if term is not None:
            raise ValueError(f"{kind} from {origin}: a write fenced to term {term} is never handed over")
        check = self._forward_checks[kind]
        if check is not None:
            try:
                check(body, origin)
            except ValueError as exc:
                raise ValueError(f"{kind} from {origin}: {exc}") from None

    def applied_at(self, proposal_id: str) -> int | None:
        """Index at which ``proposal_id`` took effect, or None if it has not (yet)."""
        return self._seen.get(proposal_id)

    def apply(self, entry: Entry) -> Applied:
        """Applies one committed entry. Entries must come in log order, each once.

        A malformed command or an unknown kind is skipped (logged), identically on every node:
        refusing it would stop the node from ever applying anything after it.

        Raises:
            ValueError: ``entry`` is not the next index.
        """
        if entry.index != self.applied_index + 1:
            raise ValueError(f"applying {entry.index} after {self.applied_index}")
        self.applied_index = entry.index
        pid = entry.proposal_id
        if entry.type is not EntryType.NORMAL:
            return Applied(entry.index, pid)
        try:
            command = json.loads(entry.data)
            kind, body, term = command["kind"], command["body"], command.get("term")
        except (ValueError, KeyError, TypeError, AttributeError):
            command = kind = body = term = None
        if term is not None and term != entry.term:
            # Not recorded as seen: the write did not happen, and its proposer, no longer
            # leading in that term, learns so (RaftDriver.propose raises NotLeader).
            log.info("skipping a write fenced to term %s in an entry of term %d (index %d)",
                     term, entry.term, entry.index)
            return Applied(entry.index, pid, fenced=True)
        if pid is not None:
            first = self._seen.get(pid)
            if first is not None:
                return Applied(first, pid, duplicate=True)
            self._seen[pid] = entry.index
        if command is None:
            log.error("skipping malformed command at index %d", entry.index)
            return Applied(entry.index, pid)
        handler = self._handlers.get(kind)
        if handler is None:
            log.error("skipping command of unknown kind %r at index %d", kind, entry.index)
            return Applied(entry.index, pid)
        return Applied(entry.index, pid, handler(body, entry.index))
