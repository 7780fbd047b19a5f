"""The driver's screening of peer input, on its own (no server, no loop running): what reaches
the core, what moves a member's address, and what a core exception does (issue 18 review)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from nexus_node.consensus.driver import RaftDriver
from nexus_node.consensus.raft import (
    Entry,
    EntryType,
    MemoryStorage,
    MsgApp,
    MsgHeartbeat,
    RaftConfig,
    RawNode,
    bootstrap,
)
from nexus_node.consensus.state import encode_command
from nexus_node.consensus.transport import PeerMismatch
from nexus_node.jobs.events import EventHub
from nexus_node.jobs.registry import ReplicatedRecords


def _driver(tmp_path, node_id: str = "b", voters=("a", "b", "c")) -> RaftDriver:
    d = RaftDriver(node_id, "test", tmp_path / "raft.db", "127.0.0.1:9", {"a": "127.0.0.1:1"})
    st = MemoryStorage()
    bootstrap(st, list(voters))
    d._raw = RawNode(RaftConfig(node_id), st)
    d.MOVE_CHECK_INTERVAL = 0.0   # type: ignore[misc]
    return d


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "test")


class _Answers:
    """Stands in for PeerTransport.hello: each call takes the next answer (an exception to
    raise, or None for "it answers as the node"); records the addresses dialled."""

    def __init__(self, driver: RaftDriver, *answers: BaseException | None) -> None:
        self.answers = list(answers)
        self.dialled: list[str] = []
        driver._transport.stub = lambda address: address          # type: ignore[method-assign]
        driver._transport.hello = self                             # type: ignore[method-assign]

    async def __call__(self, stub: str, expected: str | None) -> object:
        self.dialled.append(stub)
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        return object()


async def _settle(driver: RaftDriver) -> None:
    for _ in range(50):
        if not driver._verifying:
            break
        await asyncio.sleep(0.01)
    await asyncio.gather(*driver._tasks, return_exceptions=True)


# ---- commands are the leader's to check --------------------------------------------------------


def test_a_follower_never_refuses_an_append_for_its_commands(tmp_path):
    d = _driver(tmp_path)
    d.state.register("records", lambda body, index: None,
                     validate=lambda body: (_ for _ in ()).throw(ValueError("stricter now")))
    entries = (Entry(2, 1, EntryType.NORMAL, encode_command("records", {"op": "old"})),
               Entry(3, 1, EntryType.NORMAL, encode_command("a_new_kind", {})),
               Entry(4, 1, EntryType.NORMAL, b"not even json"))
    with pytest.raises(ValueError):
        d.state.validate(entries[0].data)
    assert d.screen(MsgApp("a", "b", 1, 1, 1, entries, 4)) is None
    # A non-member is still refused.
    assert "not a member" in d.screen(MsgApp("x", "b", 1, 1, 1, entries, 4))


# ---- addresses ---------------------------------------------------------------------------------


def _records(d: RaftDriver) -> ReplicatedRecords:
    return ReplicatedRecords(d, EventHub())


def _member(recs: ReplicatedRecords, node_id: str, address: str, index: int = 5) -> None:
    recs._apply({"op": "member", "node_id": node_id, "address": address}, index)


async def test_a_forged_member_record_does_not_move_a_member_that_still_answers(tmp_path):
    d = _driver(tmp_path)
    recs = _records(d)
    d.note_hello("c", "127.0.0.1:3")                 # c's own Hello: first hand
    hello = _Answers(d, None)                        # ...and c still answers there
    # A node holding the peer secret hands over "its own" address in c's name: committed, the
    # same on every node, but this node's address book checks before it moves c.
    _member(recs, "c", "evil:1")
    assert recs.addresses["c"] == "evil:1"           # the record itself is kept as it is
    await _settle(d)
    assert hello.dialled == ["127.0.0.1:3"]
    assert d.peer_address("c") == "127.0.0.1:3"


async def test_a_member_record_moves_a_member_whose_old_address_is_gone(tmp_path):
    d = _driver(tmp_path)
    recs = _records(d)
    d.note_hello("c", "127.0.0.1:3")
    _Answers(d, PeerMismatch("expected c, found z"))
    _member(recs, "c", "127.0.0.1:4")
    await _settle(d)
    assert d.peer_address("c") == "127.0.0.1:4"


async def test_an_address_known_only_from_the_records_follows_them(tmp_path):
    d = _driver(tmp_path)
    recs = _records(d)
    hello = _Answers(d)
    _member(recs, "c", "127.0.0.1:3", 5)             # replayed history: no check, no dial
    _member(recs, "c", "127.0.0.1:4", 6)
    assert d.peer_address("c") == "127.0.0.1:4" and not hello.dialled


@pytest.mark.parametrize("answers, moved", [
    ([_rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)], False),                       # a timeout
    ([_rpc_error(grpc.StatusCode.UNAVAILABLE), None], False),                        # back at once
    ([_rpc_error(grpc.StatusCode.UNAVAILABLE), _rpc_error(grpc.StatusCode.UNAVAILABLE),
      _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)], False),
    ([_rpc_error(grpc.StatusCode.UNAVAILABLE)] * getattr(RaftDriver, "MOVE_CHECKS", 3), True),  # gone
    ([PeerMismatch("expected c, found z")], True),                                   # another node there
    ([None], False),                                                                 # still c
])
async def test_a_member_moves_only_on_a_definite_answer_from_its_old_address(tmp_path, answers, moved):
    d = _driver(tmp_path)
    d.note_hello("c", "127.0.0.1:3")
    _Answers(d, *answers)
    d.note_hello("c", "127.0.0.1:4")                 # a Hello claims c elsewhere
    await _settle(d)
    assert d.peer_address("c") == ("127.0.0.1:4" if moved else "127.0.0.1:3")


async def test_a_claim_made_while_a_move_is_checked_is_checked_next(tmp_path):
    d = _driver(tmp_path)
    recs = _records(d)
    d.note_hello("c", "127.0.0.1:3")
    _Answers(d, PeerMismatch("z"), PeerMismatch("z"))
    _member(recs, "c", "127.0.0.1:4", 5)
    _member(recs, "c", "127.0.0.1:5", 6)             # while :3 is being checked
    await _settle(d)
    await _settle(d)
    assert d.peer_address("c") == "127.0.0.1:5"


# ---- a core exception ends the loop ----------------------------------------------------------


def test_an_exception_from_the_core_is_not_survived(tmp_path, caplog):
    d = _driver(tmp_path)

    def broken(m: object) -> str | None:
        raise RuntimeError("half-changed")

    d._raw.step = broken                             # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="half-changed"):
        d._handle(MsgHeartbeat("a", "b", 1, 0))
    assert "consensus loop stops" in caplog.text


def test_an_invalid_message_is_a_drop_not_an_exception(tmp_path):
    d = _driver(tmp_path)
    term = d._raw.raft.term
    d._handle(MsgHeartbeat("a", "b", 2**63 - 1, 0))  # dropped with a warning, the loop goes on
    d._handle(MsgApp("a", "b", term, 0, 0, (Entry(1, term, EntryType.NORMAL, b"x"),) * 2, 0))
    assert d._raw.raft.term == term
