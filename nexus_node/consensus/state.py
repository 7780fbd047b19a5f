"""The replicated state machine: committed log entries in, deterministic effects out.

Every node applies the same committed entries in the same order (State Machine Safety, Raft
§5.4.3), so every node's :class:`ReplicatedState` goes through the same states. A command is a
NORMAL entry whose data is JSON ``{"kind": ..., "body": ...}``; each kind has one handler
(today the Optuna journal, :mod:`nexus_node.study.journal`; jobs, blob placement and the model
registry come later).

Duplicates: a client that lost an answer (a timeout, a failover) retries with the same proposal
id, and both copies may end up committed. Raft thesis §6.3 makes the state machine filter them:
the first entry carrying an id takes effect, later ones are no-ops that report the first one's
index. An id is remembered for :data:`DEDUPE_ENTRIES` entries from the index where it took
effect, no longer: a proposer retries only until its ``propose_timeout`` (30 s by default), far
fewer entries than that, so older ids can no longer come back, and the set stays bounded as the
log is compacted. The window counts entries, never time, so every node decides duplicate or not
identically, whether it replayed the log or restored a snapshot (which holds the ids in the
window).

Snapshots (Raft §7): :meth:`ReplicatedState.capture` takes every kind's state at the applied
index as plain JSON items (never a pickle: a snapshot crosses the network and may come from
another version of the code), and :meth:`ReplicatedState.restore` replaces everything by such
items, all or nothing.

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

import collections
import dataclasses
import json
import logging
from typing import Any, Callable, Iterable, Iterator

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

#: Called on the driver's task between two applies; returns a function that, called later on
#: any thread, yields the kind's state at that moment as JSON-able items, without reading live
#: state that later applies change (what is mutated in place is copied; an append-only list
#: may be captured as the list and its length).
Capture = Callable[[], Callable[[], Iterable[Any]]]
#: Called on the driver's task: ``(items, index)`` replaces the kind's whole state by the items a
#: Capture yielded at log ``index`` (on this node or another, maybe another version of the code:
#: the items are checked). Raises ValueError saying what is wrong, before changing anything.
Restore = Callable[[Iterable[Any], int], None]
#: For a kind whose state is durable on its own (the study tables): the log index whose state
#: it holds. A snapshot at or below it is not restored into the kind (:meth:`ReplicatedState.held`),
#: and the kind's handler skips the entries up to it when a restarted node replays its log.
Persisted = Callable[[], int]

#: How many log entries after the one where a proposal id took effect a copy of it still counts
#: as a duplicate (see the module docstring).
DEDUPE_ENTRIES = 20_000

#: The item a snapshot starts with: the applied index and the proposal ids in the window.
STATE_ITEM = "state"

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

    Not thread-safe: only the driver's task calls :meth:`apply`, :meth:`capture` and
    :meth:`restore`. Handlers that expose data to other threads (the journal) guard it
    themselves. The function :meth:`capture` returns may run on any thread.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._validators: dict[str, Validator | None] = {}
        self._forward_checks: dict[str, ForwardCheck | None] = {}
        self._captures: dict[str, tuple[Capture, Restore]] = {}
        self._persisted: dict[str, Persisted] = {}
        # Proposal id -> index where it took effect, in index order: the oldest is first, so
        # pruning the window pops from the front (an OrderedDict does that in O(1); a dict's
        # front fills with deleted slots that every lookup of the first key walks over).
        self._seen: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.applied_index = 0

    def register(self, kind: str, handler: Handler, validate: Validator | None = None,
                 forwarded: ForwardCheck | None = None, capture: Capture | None = None,
                 restore: Restore | None = None, persisted: Persisted | None = None) -> None:
        """Routes commands of ``kind`` to ``handler``.

        Args:
            validate: Checks a body before it is proposed or taken from a peer (see
                :meth:`validate`); None: any body of this kind is accepted.
            forwarded: Checks a body a follower handed over, on the leader (see
                :meth:`check_forwarded`); None: any follower may write any such body.
            capture: Takes the kind's state for a snapshot (see :data:`Capture`).
            restore: Replaces the kind's state by a snapshot's items (see :data:`Restore`).
                Both or neither: a kind without them holds no state (the mesh's barrier).
            persisted: See :data:`Persisted` (only with capture and restore).

        Raises:
            ValueError: ``kind`` already has a handler, or only one of capture and restore.
        """
        if kind in self._handlers or kind == STATE_ITEM:
            raise ValueError(f"command kind {kind!r} already has a handler")
        if (capture is None) != (restore is None):
            raise ValueError(f"command kind {kind!r}: a snapshot needs both capture and restore, or neither")
        self._handlers[kind] = handler
        self._validators[kind] = validate
        self._forward_checks[kind] = forwarded
        if capture is not None and restore is not None:
            self._captures[kind] = (capture, restore)
            if persisted is not None:
                self._persisted[kind] = persisted

    def capture(self) -> Callable[[], Iterator[tuple[str, Any]]]:
        """Takes the state at :attr:`applied_index`, on the driver's task.

        Returns:
            A function, safe to call later from any thread, that yields
            ``("state", {"applied_index": i, "seen": [[pid, index], ...]})`` first, then
            ``(kind, item)`` for each item of each kind, kinds in registration order.
        """
        head = {"applied_index": self.applied_index, "seen": [[pid, i] for pid, i in self._seen.items()]}
        later = [(kind, capture()) for kind, (capture, _) in self._captures.items()]

        def items() -> Iterator[tuple[str, Any]]:
            yield STATE_ITEM, head
            for kind, produce in later:
                for item in produce():
                    yield kind, item
        return items

    def capturable(self) -> bool:
        """Whether every kind's state is the state at :attr:`applied_index`: a kind durable on
        its own may be ahead of it while a restarted node replays entries it already holds,
        and a snapshot taken then would be labelled with an older index than it holds."""
        return all(at() <= self.applied_index for at in self._persisted.values())

    def held(self, index: int) -> frozenset[str]:
        """The kinds whose own durable state is at or past ``index`` (see :data:`Persisted`):
        a snapshot at ``index`` is not restored into them, and need not even be read for them."""
        return frozenset(kind for kind, at in self._persisted.items() if at() >= index)

    def restore(self, index: int, items: Iterable[tuple[str, Any]], held: frozenset[str] = frozenset()) -> None:
        """Replaces everything by a snapshot taken at ``index``, on the driver's task: the
        applied index, the proposal ids in the window and every kind's state (a kind with no
        items restores to empty), except the ``held`` kinds (:meth:`held`), which keep theirs
        and whose items, if any, are ignored. All or nothing: the "state" item is checked
        before anything changes, and if a kind refuses its items, the kinds restored before it
        are put back.

        Raises:
            ValueError: the items are malformed; the message says what is wrong. The state is
                as it was.
        """
        iterator = iter(items)
        first = next(iterator, None)
        if not isinstance(first, (tuple, list)) or len(first) != 2 or first[0] != STATE_ITEM:
            raise ValueError(f'a snapshot starts with its ("{STATE_ITEM}", {{...}}) item')
        seen = _seen_of(index, first[1])
        grouped: dict[str, list[Any]] = {kind: [] for kind in self._captures if kind not in held}
        for pair in iterator:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[0], str):
                raise ValueError("a snapshot item is a pair (kind, item)")
            kind = pair[0]
            if kind in held:
                continue
            if kind not in grouped:
                raise ValueError(f"the snapshot holds state of kind {kind!r:.60}, which this node "
                                 "has no state machine for" if kind != STATE_ITEM else
                                 f'the snapshot holds a second "{STATE_ITEM}" item')
            grouped[kind].append(pair[1])
        # What each kind holds now, to put back if a later kind refuses its items.
        # What each kind held, to put back if a later kind refuses its items (never needed for
        # the last kind: a kind that refuses its items changes nothing).
        last = next(reversed(grouped), None)
        before = {kind: self._captures[kind][0]() for kind in grouped if kind != last}
        done: list[str] = []
        for kind, batch in grouped.items():
            try:
                self._captures[kind][1](batch, index)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                for back in done:
                    self._captures[back][1](list(before[back]()), self.applied_index)
                what = str(exc) if isinstance(exc, ValueError) else f"malformed item ({type(exc).__name__}: {exc})"
                raise ValueError(f"snapshot at index {index}, {kind}: {what}") from None
            done.append(kind)
        self._seen = seen
        self.applied_index = index

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
        """Index at which ``proposal_id`` took effect, or None if it has not (yet), or did more
        than :data:`DEDUPE_ENTRIES` entries ago."""
        return self._seen.get(proposal_id)

    def _forget_before(self, index: int) -> None:
        """Drops the ids that took effect :data:`DEDUPE_ENTRIES` entries or more before ``index``
        (amortised O(1) per apply: each id is popped once, from the front)."""
        seen, oldest = self._seen, index - DEDUPE_ENTRIES
        while seen and next(iter(seen.values())) <= oldest:
            seen.popitem(last=False)

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
        self._forget_before(entry.index)
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


def _seen_of(index: int, state: Any) -> collections.OrderedDict[str, int]:
    """The proposal ids of a snapshot's "state" item taken at ``index``, in index order, those
    out of the window dropped (as :meth:`ReplicatedState.apply` would have dropped them).

    Raises:
        ValueError: the item is malformed or was not taken at ``index``.
    """
    if type(index) is not int or index < 0:
        raise ValueError(f"a snapshot's index is a whole number, not {index!r:.40}")
    if not isinstance(state, dict) or set(state) != {"applied_index", "seen"}:
        raise ValueError(f'the "{STATE_ITEM}" item is an object of applied_index and seen')
    if state["applied_index"] != index or type(state["applied_index"]) is not int:
        raise ValueError(f"the snapshot was taken at index {state['applied_index']!r:.40}, not {index}")
    pairs = state["seen"]
    if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and type(p[1]) is int
            and 0 < p[1] <= index for p in pairs):
        raise ValueError(f"seen is a list of [proposal id, index] pairs, indexes from 1 to {index}")
    if len({pid for pid, _ in pairs}) != len(pairs):
        raise ValueError("seen names a proposal id twice")
    return collections.OrderedDict(
        (pid, at) for pid, at in sorted(pairs, key=lambda p: p[1]) if at > index - DEDUPE_ENTRIES)
