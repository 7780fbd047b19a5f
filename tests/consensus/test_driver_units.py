"""The driver's parts on their own: the SQLite log store and the deduplicating state machine."""

from __future__ import annotations

import asyncio

import pytest

from nexus_node.consensus.log_store import RaftLogStore
from nexus_node.consensus.raft import Entry, EntryType, HardState, MemoryStorage, RaftConfig, RawNode, bootstrap
from nexus_node.consensus.state import ReplicatedState, encode_command


async def test_log_store_survives_reopen_and_truncates_like_memory_storage(tmp_path):
    path = tmp_path / "raft.db"
    store = await RaftLogStore.open(path)
    assert store.is_empty()
    entries = [Entry(1, 1, EntryType.CONFIG, b'{"voters":["a"]}'),
               Entry(2, 2, data=b"x", proposal_id="p2"), Entry(3, 2, data=b"y")]
    await store.save(HardState(2, "a", 1), entries)
    # A follower's conflicting suffix is replaced (§5.3): index 3 from term 3 overwrites term 2.
    await store.save(HardState(3, None, 2), [Entry(3, 3, data=b"z")])
    await store.close()

    again = await RaftLogStore.open(path)
    assert not again.is_empty()
    assert again.hard_state() == HardState(3, None, 2)
    assert (again.first_index(), again.last_index(), again.term(0), again.term(3)) == (1, 3, 0, 3)
    assert again.entries(1, 4) == [entries[0], entries[1], Entry(3, 3, data=b"z")]
    with pytest.raises(ValueError, match="gap"):
        await again.save(None, [Entry(5, 3)])
    await again.close()


async def test_a_commit_only_change_is_not_forced_to_disk_but_term_and_vote_always_are(tmp_path):
    import sqlite3

    path = tmp_path / "raft.db"

    def on_disk() -> tuple:
        """What a crash right now would leave: (term, vote, commit index), last index."""
        with sqlite3.connect(path) as db:
            term, vote, commit = db.execute("SELECT term, vote, commit_index FROM raft_hard_state").fetchone()
            commit_at, last = db.execute("SELECT max(commit_at), max(idx) FROM raft_log").fetchone()
            return (term, vote, max(commit, commit_at or 0)), last

    store = await RaftLogStore.open(path)
    await store.save(HardState(2, "a", 0), [Entry(1, 1, EntryType.CONFIG, b'{"voters":["a"]}')])
    await store.save(HardState(2, "a", 1), [])            # only the commit index moved
    assert store.hard_state() == HardState(2, "a", 1) and on_disk() == ((2, "a", 0), 1)
    await store.save(HardState(3, "a", 1), [])            # a term is durable at once
    assert on_disk() == ((3, "a", 1), 1)
    await store.save(HardState(3, "a", 2), [Entry(2, 3, data=b"x")])
    assert on_disk() == ((3, "a", 2), 2)                  # entries carry the commit index with them
    await store.save(HardState(3, "a", 3), [])
    assert on_disk() == ((3, "a", 2), 2)
    await store.save(None, [Entry(3, 3, data=b"y")])      # ...the next write of entries too
    assert on_disk() == ((3, "a", 3), 3)
    await store.save(HardState(3, "a", 3), [Entry(4, 3, data=b"z")])
    await store.save(HardState(3, "a", 4), [])
    await store.close()                                   # and a clean close flushes it
    assert on_disk() == ((3, "a", 4), 4)
    again = await RaftLogStore.open(path)
    assert again.hard_state() == HardState(3, "a", 4)
    await again.close()


async def test_a_log_from_before_commit_at_opens_and_gains_the_column(tmp_path):
    import sqlite3

    path = tmp_path / "raft.db"
    with sqlite3.connect(path) as db:   # the schema of earlier versions
        db.executescript("""
            CREATE TABLE raft_hard_state (id INTEGER PRIMARY KEY CHECK (id = 0), term INTEGER NOT NULL,
                                          vote TEXT, commit_index INTEGER NOT NULL);
            CREATE TABLE raft_log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, type TEXT NOT NULL,
                                   data BLOB NOT NULL, proposal_id TEXT);
            INSERT INTO raft_hard_state VALUES (0, 2, 'a', 1);
            INSERT INTO raft_log VALUES (1, 1, 'config', X'7B7D', NULL);
        """)
    store = await RaftLogStore.open(path)
    assert store.hard_state() == HardState(2, "a", 1) and store.last_index() == 1
    await store.save(HardState(2, "a", 2), [Entry(2, 2, data=b"x")])
    await store.close()
    again = await RaftLogStore.open(path)
    assert again.hard_state() == HardState(2, "a", 2) and again.last_index() == 2
    await again.close()


async def test_a_save_too_long_for_one_statement_is_still_one_transaction(tmp_path):
    path = tmp_path / "raft.db"
    store = await RaftLogStore.open(path)
    many = [Entry(i, 1, data=b"%d" % i) for i in range(1, 2502)]
    await store.save(HardState(1, None, 0), many)
    await store.save(None, [Entry(2500, 2, data=b"new")])   # a conflicting suffix: DELETE + INSERT
    await store.close()
    again = await RaftLogStore.open(path)
    assert again.last_index() == 2500 and again.entries(2499, 2501) == [many[2498], Entry(2500, 2, data=b"new")]
    await again.close()


async def test_a_node_restarts_from_the_log_store_alone(tmp_path):
    path = tmp_path / "raft.db"
    store = await RaftLogStore.open(path)
    seed = MemoryStorage()
    bootstrap(seed, ["a"])
    await store.save(seed.hard_state(), seed.entries(1, 2))
    node = RawNode(RaftConfig("a"), store)
    node.campaign()  # a single voter elects itself
    while (rd := node.ready()) is not None:
        await store.save(rd.hard_state, rd.entries)
        node.advance(rd)
    node.propose(b"data", "p")
    while (rd := node.ready()) is not None:
        await store.save(rd.hard_state, rd.entries)
        node.advance(rd)
    status = node.status()
    await store.close()

    reopened = await RaftLogStore.open(path)
    again = RawNode(RaftConfig("a"), reopened)
    assert (again.status().term, again.status().commit) == (status.term, status.commit)
    rd = again.ready()
    assert rd is not None and [e.proposal_id for e in rd.committed_entries][-1] == "p"
    await reopened.close()


def test_state_machine_applies_a_proposal_id_once_and_skips_bad_commands():
    state = ReplicatedState()
    seen: list[tuple[object, int]] = []
    state.register("k", lambda body, index: seen.append((body, index)) or len(seen))
    with pytest.raises(ValueError, match="already"):
        state.register("k", lambda body, index: None)

    a = state.apply(Entry(1, 1, data=encode_command("k", {"v": 1}), proposal_id="p"))
    noop = state.apply(Entry(2, 2, EntryType.NOOP))
    dup = state.apply(Entry(3, 2, data=encode_command("k", {"v": 1}), proposal_id="p"))
    bad = state.apply(Entry(4, 2, data=b"not json", proposal_id="q"))
    unknown = state.apply(Entry(5, 2, data=encode_command("nope", 1)))
    assert (a.index, a.result, a.duplicate) == (1, 1, False)
    assert noop.result is None and not noop.duplicate
    assert (dup.index, dup.duplicate) == (1, True)
    assert bad.result is None and unknown.result is None
    assert seen == [({"v": 1}, 1)]
    assert state.applied_at("p") == 1 and state.applied_at("q") == 4 and state.applied_at("r") is None
    with pytest.raises(ValueError, match="after 5"):
        state.apply(Entry(7, 2))


async def test_a_driver_stops_cleanly_with_a_handed_over_write_still_in_its_inbox(tmp_path):
    from nexus_node.consensus.driver import MeshSettings, RaftDriver

    driver = RaftDriver("a", "test", tmp_path / "raft.db", "127.0.0.1:1", {},
                        settings=MeshSettings(tick_interval=0.02))
    await driver.start(["a"])
    await driver.wait_for(lambda: driver.is_leader, 10)
    # A follower's write (nobody waits on it here: its proposer retries), then the node stops
    # before its loop takes it: stop() fails the waiting proposals and must pass this one by.
    from nexus_node.consensus.state import encode_command
    driver.state.register("t", lambda body, index: None)
    # (From a member, as a write handed over must be: here the only one.)
    assert driver.receive_proposals([(encode_command("t", {}), "p-forwarded", False)], "a") == 1
    async with asyncio.timeout(10):   # not wait_for: its task would let the loop run first
        await driver.stop()
    assert driver.state.applied_at("p-forwarded") is None


async def test_a_task_starts_only_once_its_node_has_applied_what_the_coordinator_had(tmp_path):
    from types import SimpleNamespace

    from nexus_node._generated.nexus.v1 import peer_pb2 as pb
    from nexus_node.consensus.driver import MeshSettings, RaftDriver
    from nexus_node.consensus.state import encode_command
    from nexus_node.work.agent import WorkerAgent

    driver = RaftDriver("a", "test", tmp_path / "raft.db", "127.0.0.1:1", {},
                        settings=MeshSettings(tick_interval=0.02))
    await driver.start(["a"])
    driver.state.register("noop-for-test", lambda body, index: None)
    try:
        await driver.wait_for(lambda: driver.is_leader, 10)
        worker = WorkerAgent(node_id="a", cluster="test", address="127.0.0.1:1", pool=None, blobs=None,  # type: ignore[arg-type]
                             mesh=SimpleNamespace(driver=driver), placement=None, fetch_blob=lambda sha: None, storage={})
        ahead = driver.state.applied_index + 1
        waiting = asyncio.create_task(worker._caught_up(ahead))
        for _ in range(20):   # the loop turns; nothing new is applied, so it keeps waiting
            await asyncio.sleep(0)
        assert not waiting.done()
        index = await driver.propose(encode_command("noop-for-test", {}))
        await asyncio.wait_for(waiting, 10)
        assert driver.state.applied_index >= ahead
        # What a coordinator sends: its newest own write.
        assert driver.last_local_index == index
        await asyncio.wait_for(worker._caught_up(0), 1)   # an old coordinator's 0: at once

        # An assignment's index reaches the wait: the task holds until the node catches up
        # (then fails here at once: this worker has no runner pool).
        worker._assign(pb.Assignment(lease_id="l1", term=driver.status().term, task_json=b'{"task": "trial"}',
                                     log_index=driver.state.applied_index + 1))
        task = worker.running["l1"]
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done()
        await driver.propose(encode_command("noop-for-test", {}))
        await asyncio.wait_for(task, 10)
        assert worker._finished["l1"].error_kind == "internal"   # it went on to take a slot
    finally:
        await driver.stop()
