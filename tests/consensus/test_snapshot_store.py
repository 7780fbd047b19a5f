"""The log store with snapshots and compaction (nexus_node/consensus/log_store.py): what it
records survives a reopen, a crash at any step leaves a whole state, and a missing or full disk
is said plainly. Real SQLite files and real snapshot files in tmp_path; crashes are real
processes that die with ``os._exit``."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest

from nexus_node.consensus.integrity import StartRefused, check_data_dir
from nexus_node.consensus.log_store import LogDamaged, LogFile, RaftLogStore, inspect
from nexus_node.consensus.raft import Compacted, Entry, EntryType, HardState, Membership, SnapshotMeta
from nexus_node.consensus.recovery import force_new_cluster_in
from nexus_node.consensus.snapshot_file import SnapshotFile, SnapshotNotWritten, verify_snapshot, write_snapshot
from tests.blocking import allow_blocking
from tests.conftest import ROOT, NodeProcess
from tests.node.exits import run_node

# The store does its file work (the snapshot folder, old files) on threads, never on the loop.
pytestmark = pytest.mark.usefixtures("no_blocking_io")

CONFIG = '{"voters":["a"]}'


Opener = Callable[..., Awaitable[RaftLogStore]]


@pytest.fixture
async def open_store() -> AsyncIterator[Opener]:
    """``RaftLogStore.open``, closing every store at the end even if the test failed (an open
    aiosqlite connection keeps its thread, and so the test process, alive)."""
    opened: list[RaftLogStore] = []

    async def open_(path: Path, **kwargs: Any) -> RaftLogStore:
        opened.append(await RaftLogStore.open(path, **kwargs))
        return opened[-1]
    yield open_
    for store in opened:
        await store.close()


def _entries(lo: int, hi: int, term: int) -> list[Entry]:
    return [Entry(i, term, data=f"command {i}".encode(), proposal_id=f"p{i}") for i in range(lo, hi + 1)]


async def _store_with(open_store: Opener, path: Path, last: int) -> tuple[RaftLogStore, list[Entry]]:
    """A store holding entries 1..last (term 1 up to 5, then term 2), all committed."""
    store = await open_store(path)
    entries = [Entry(1, 1, EntryType.CONFIG, CONFIG.encode()), *_entries(2, min(last, 5), 1),
               *_entries(6, last, 2)]
    await store.save(HardState(2, "a", last), entries)
    return store, entries


async def _snapshot(store: RaftLogStore, index: int, items: int = 3) -> SnapshotFile:
    meta = SnapshotMeta(index, store.term(index), CONFIG)
    body = [("state", {"applied_index": index})] + [("journal", {"n": n}) for n in range(items)]
    return await asyncio.to_thread(write_snapshot, store.snapshot_dir, meta, body)


def _rows(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [i for (i,) in db.execute("SELECT idx FROM raft_log ORDER BY idx")]


def _files(directory: Path) -> list[str]:
    with allow_blocking():
        return sorted(p.name for p in directory.iterdir())


async def test_a_compacted_log_reopens_as_it_was_and_its_table_holds_only_the_tail(tmp_path, open_store):
    path = tmp_path / "raft.db"
    store, entries = await _store_with(open_store, path, 10)
    assert store.snapshot_dir == tmp_path / "snapshots" and store.snapshot_file() is None
    first = await _snapshot(store, 8)
    await store.create_snapshot(first, compact_to=6)
    await store.save(HardState(3, "a", 12), _entries(11, 12, 3))
    seen = (store.first_index(), store.last_index(), store.term(6), store.term(12), store.hard_state(),
            store.snapshot(), store.snapshot_file())
    assert seen == (7, 12, 2, 3, HardState(3, "a", 12), first.meta, first)
    await store.close()

    again = await open_store(path, check=True)
    assert (again.first_index(), again.last_index(), again.term(6), again.term(12), again.hard_state(),
            again.snapshot(), again.snapshot_file()) == seen
    assert again.entries(7, 13) == entries[6:] + _entries(11, 12, 3)
    with pytest.raises(Compacted):
        again.entries(6, 8)
    assert _rows(path) == list(range(7, 13))
    assert not again.is_empty()
    with pytest.raises(ValueError, match="replaces compacted entries"):
        await again.save(None, [Entry(6, 3)])

    # A later snapshot replaces the first: its file goes, and the table keeps only the tail.
    second = await _snapshot(again, 12)
    await again.create_snapshot(second, compact_to=11)
    assert _files(again.snapshot_dir) == ["snap-12-3.jsonl"]
    assert _rows(path) == [12]
    await again.close()
    third = await open_store(path)
    assert (third.first_index(), third.last_index(), third.term(11), third.snapshot_file()) == (12, 12, 3, second)
    await third.close()


async def test_the_table_stays_bounded_over_many_snapshots(tmp_path, open_store):
    path = tmp_path / "raft.db"
    store, _ = await _store_with(open_store, path, 10)
    for _ in range(20):
        last = store.last_index()
        await store.save(HardState(2, "a", last + 50), _entries(last + 1, last + 50, 2))
        await store.create_snapshot(await _snapshot(store, last + 50), compact_to=last + 40)
    await store.close()
    assert len(_rows(path)) == 10
    assert _files(tmp_path / "snapshots") == [f"snap-{store.last_index()}-2.jsonl"]


async def test_a_snapshot_can_be_recorded_without_dropping_entries_and_must_be_of_the_committed_log(tmp_path, open_store):
    path = tmp_path / "raft.db"
    store, _ = await _store_with(open_store, path, 10)
    await store.save(HardState(2, "a", 10), _entries(11, 12, 2))   # not committed yet
    with pytest.raises(ValueError, match="not a committed entry of the log"):
        await store.create_snapshot(await _snapshot(store, 12), compact_to=12)
    early = await _snapshot(store, 4)
    with pytest.raises(ValueError, match="cannot compact to 5: the snapshot stops at 4"):
        await store.create_snapshot(early, compact_to=5)
    await store.create_snapshot(early, compact_to=0)
    assert (store.first_index(), store.snapshot()) == (1, early.meta)
    with pytest.raises(ValueError, match="not after the one held"):
        await store.create_snapshot(early, compact_to=4)
    await store.close()
    again = await open_store(path)
    assert (again.first_index(), again.last_index(), again.snapshot_file()) == (1, 12, early)
    await again.close()


async def test_an_installed_snapshot_replaces_the_log_and_survives_a_reopen(tmp_path, open_store):
    path = tmp_path / "raft.db"
    store, _ = await _store_with(open_store, path, 10)
    own = await _snapshot(store, 8)
    await store.create_snapshot(own, compact_to=5)
    await store.save(HardState(4, "b", 10), [])
    # A leader's snapshot at 30 (term 4), received into the snapshot folder and verified.
    leaders = await asyncio.to_thread(write_snapshot, store.snapshot_dir, SnapshotMeta(30, 4, CONFIG),
                                      [("state", {"applied_index": 30})])
    received = await asyncio.to_thread(verify_snapshot, leaders.path)
    with pytest.raises(ValueError, match=f"is {received.size} bytes, not {received.size + 1}"):
        await store.install_snapshot(dataclasses.replace(received, size=received.size + 1))
    assert (store.first_index(), store.snapshot()) == (6, own.meta)   # nothing changed
    await store.install_snapshot(received)
    assert (store.first_index(), store.last_index(), store.term(30)) == (31, 30, 4)
    assert store.hard_state() == HardState(4, "b", 30)
    assert _files(store.snapshot_dir) == ["snap-30-4.jsonl"]
    assert _rows(path) == []
    await store.close()

    again = await open_store(path, check=True)
    assert not again.is_empty()
    assert (again.first_index(), again.last_index(), again.term(30), again.hard_state(), again.snapshot_file()) == \
        (31, 30, 4, HardState(4, "b", 30), received)
    await again.save(HardState(4, "b", 31), _entries(31, 32, 4))   # the leader's entries follow
    await again.close()
    third = await open_store(path)
    assert (third.first_index(), third.last_index(), third.entries(31, 33)) == (31, 32, _entries(31, 32, 4))
    await third.close()


async def test_a_new_node_joins_by_snapshot_alone(tmp_path, open_store):
    # A node with nothing on disk yet: the snapshot is its whole state, the next start knows it.
    path = tmp_path / "raft.db"
    store = await open_store(path)
    assert store.is_empty()
    file = await asyncio.to_thread(write_snapshot, store.snapshot_dir, SnapshotMeta(7, 2, CONFIG),
                                   [("state", {"applied_index": 7})])
    await store.install_snapshot(file)
    await store.close()
    assert await inspect(path) is LogFile.HELD
    again = await open_store(path)
    assert not again.is_empty()
    assert (again.first_index(), again.last_index(), again.hard_state().commit) == (8, 7, 7)
    await again.close()


async def test_an_old_log_without_the_snapshot_table_opens_and_compacts(tmp_path, open_store):
    path = tmp_path / "raft.db"
    with sqlite3.connect(path) as db:   # what a node wrote before compaction existed
        db.executescript("""
            CREATE TABLE raft_hard_state (id INTEGER PRIMARY KEY CHECK (id = 0), term INTEGER NOT NULL,
                                          vote TEXT, commit_index INTEGER NOT NULL);
            CREATE TABLE raft_log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, type TEXT NOT NULL,
                                   data BLOB NOT NULL, proposal_id TEXT);
            INSERT INTO raft_hard_state VALUES (0, 1, 'a', 3);
            INSERT INTO raft_log VALUES (1, 1, 'config', CAST('{"voters":["a"]}' AS BLOB), NULL),
                                        (2, 1, 'normal', CAST('x' AS BLOB), 'p2'),
                                        (3, 1, 'normal', CAST('y' AS BLOB), 'p3');
        """)
    assert await inspect(path) is LogFile.HELD
    store = await open_store(path, check=True)
    assert (store.first_index(), store.last_index(), store.snapshot()) == (1, 3, None)
    await store.create_snapshot(await _snapshot(store, 3), compact_to=2)
    await store.close()
    again = await open_store(path, check=True)
    assert (again.first_index(), again.last_index(), again.snapshot().index) == (3, 3, 3)
    await again.close()


async def test_force_new_cluster_works_on_a_log_compacted_to_its_end(tmp_path, open_store):
    path = tmp_path / "raft.db"
    three = Membership(frozenset({"a", "b", "c"}), frozenset()).encode()
    store = await open_store(path)
    await store.save(HardState(2, "a", 6), [Entry(1, 1, EntryType.CONFIG, three), *_entries(2, 6, 2)])
    file = await asyncio.to_thread(write_snapshot, store.snapshot_dir, SnapshotMeta(6, 2, three.decode()),
                                   [("state", {"applied_index": 6})])
    await store.create_snapshot(file, compact_to=6)   # the CONFIG entry is gone: the snapshot holds it
    await store.close()
    recovered = await force_new_cluster_in(tmp_path, "a")
    assert (recovered.before.voters, recovered.after.voters, recovered.last_index) == ({"a", "b", "c"}, {"a"}, 7)
    again = await open_store(path, check=True)
    assert (again.first_index(), again.last_index(), again.hard_state().commit, again.snapshot_file()) == \
        (7, 7, 7, file)
    await again.close()


# --- crashes ---------------------------------------------------------------------------------------

#: Runs in a child process on a store prepared by the test: writes a new snapshot and records
#: it, dying with os._exit(9) at the step named (a crash: no rollback, no cleanup of any kind).
CRASH = textwrap.dedent("""
    import asyncio, os, sys
    from pathlib import Path
    from nexus_node.consensus import log_store
    from nexus_node.consensus.raft import SnapshotMeta
    from nexus_node.consensus.snapshot_file import write_snapshot

    async def main(path, how, step):
        store = await log_store.RaftLogStore.open(Path(path))
        meta = SnapshotMeta(10, 2, '{"voters":["a"]}') if how == "create" else SnapshotMeta(30, 4, '{"voters":["a"]}')
        file = write_snapshot(store.snapshot_dir, meta, [("state", {"applied_index": meta.index})])
        if step == "file written":
            os._exit(9)
        if step == "in the transaction":
            execute = store._db.execute
            def dying(sql, *args):
                if sql == "COMMIT":
                    os._exit(9)
                return execute(sql, *args)
            store._db.execute = dying
        if step == "committed":
            log_store.remove_snapshots_before = lambda *args: os._exit(9)
        if how == "create":
            await store.create_snapshot(file, 9)
        else:
            await store.install_snapshot(file)
        os._exit(0)

    asyncio.run(main(*sys.argv[1:]))
""")


@pytest.mark.parametrize("how", ["create", "install"])
@pytest.mark.parametrize("step, survives", [("file written", "old"), ("in the transaction", "old"),
                                            ("committed", "new")])
async def test_a_crash_at_any_step_leaves_the_old_state_or_the_new_one(tmp_path, how, step, survives, open_store):
    path = tmp_path / "raft.db"
    store, entries = await _store_with(open_store, path, 10)
    old = await _snapshot(store, 5)
    await store.create_snapshot(old, compact_to=4)
    await store.close()

    with allow_blocking():
        child = subprocess.run([sys.executable, "-c", CRASH, str(path), how, step], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
    assert child.returncode == 9, child.stderr[-2000:]

    again = await open_store(path, check=True)
    if survives == "old":
        state = (again.first_index(), again.last_index(), again.snapshot_file(), again.entries(5, 11))
        assert state == (5, 10, old, entries[4:])
        assert _files(again.snapshot_dir) == ["snap-5-1.jsonl"]   # the new file, never recorded, is gone
    elif how == "create":
        assert (again.first_index(), again.last_index(), again.snapshot().index) == (10, 10, 10)
        assert _files(again.snapshot_dir) == ["snap-10-2.jsonl"]   # the old one, left by the crash, is gone
    else:
        assert (again.first_index(), again.last_index(), again.hard_state().commit) == (31, 30, 30)
        assert _files(again.snapshot_dir) == ["snap-30-4.jsonl"]
    assert await asyncio.to_thread(verify_snapshot, again.snapshot_file().path) == again.snapshot_file()
    await again.close()


# --- a snapshot file that is gone, or a disk that is full ----------------------------------------

async def _compacted_data_dir(open_store: Opener, data_dir: Path) -> SnapshotFile:
    with allow_blocking():
        data_dir.mkdir()
        (data_dir / "node_id").write_text("node-0000abcd\n")
    store, _ = await _store_with(open_store, data_dir / "raft.db", 10)
    file = await _snapshot(store, 8)
    await store.create_snapshot(file, compact_to=8)
    await store.close()
    return file


@pytest.mark.parametrize("damage, problem", [
    ("remove", "is missing"),
    ("truncate", "is 10 bytes, not the"),
])
async def test_a_missing_or_cut_snapshot_file_refuses_the_log_naming_it(tmp_path, damage, problem, open_store):
    data_dir = tmp_path / "node"
    file = await _compacted_data_dir(open_store, data_dir)
    with allow_blocking():
        if damage == "remove":
            file.path.unlink()
        else:
            os.truncate(file.path, 10)
    for opening in (lambda: RaftLogStore.open(data_dir / "raft.db"), lambda: inspect(data_dir / "raft.db")):
        with pytest.raises(LogDamaged, match=problem) as caught:
            await opening()
        assert str(file.path) in str(caught.value)
    # The node stops with what to do; --new-identity sets the whole state aside, snapshots too.
    # (check_data_dir runs before the node serves anything: its file work may block.)
    with allow_blocking(), pytest.raises(StartRefused, match=f"{file.path}.*from a backup.*--new-identity"):
        await check_data_dir(data_dir)
    with allow_blocking():
        fresh = await check_data_dir(data_dir, new_identity=True)
    assert fresh.retired is not None and not fresh.has_log
    assert _files(fresh.retired) == ["node_id", "raft.db", "snapshots"]


async def test_a_node_whose_snapshot_file_is_gone_stops_at_once_saying_what_to_do(tmp_path, open_store):
    node = NodeProcess(tmp_path / "node", "--no-mdns")
    with allow_blocking():
        node.start()
        node.stop()   # however it stops, what it logged is on disk (each write is fsynced)
    store = await open_store(node.data_dir / "raft.db")
    committed = store.hard_state().commit
    file = await _snapshot(store, committed)
    await store.create_snapshot(file, compact_to=committed)
    await store.close()
    with allow_blocking():
        file.path.unlink()
        out = run_node(node.data_dir)
    assert out.code == 2, out.stderr[-2000:]
    assert len(out.lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"the snapshot file it records, {file.path}, is missing" in out.lines[0]
    assert "from a backup" in out.lines[0] and "--new-identity" in out.lines[0]


async def test_a_damaged_snapshot_record_or_a_compacted_entry_left_behind_is_refused(tmp_path, open_store):
    data_dir = tmp_path / "node"
    await _compacted_data_dir(open_store, data_dir)
    path = data_dir / "raft.db"
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO raft_log (idx, term, type, data) VALUES (3, 1, 'normal', x'00')")
    with pytest.raises(LogDamaged, match="not indexes 9 to 11"):
        await inspect(path)
    with pytest.raises(LogDamaged, match="holds entry 3, which was compacted"):
        await RaftLogStore.open(path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM raft_log WHERE idx = 3")
        db.execute("UPDATE raft_snapshot SET file = '../../node_id'")
    with pytest.raises(LogDamaged, match="snapshot record .* is malformed"):
        await RaftLogStore.open(path, check=True)


@pytest.fixture
def full_snapshot_dir(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/snapshots`` on a 64 KiB tmpfs of its own: a disk that fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root")
    directory = tmp_path / "snapshots"
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


async def test_a_full_disk_while_writing_keeps_the_previous_snapshot_and_the_log(tmp_path, full_snapshot_dir, open_store):
    path = tmp_path / "raft.db"
    store, entries = await _store_with(open_store, path, 10)
    assert store.snapshot_dir == full_snapshot_dir
    previous = await _snapshot(store, 5)
    await store.create_snapshot(previous, compact_to=5)
    big: list[tuple[str, Any]] = [("state", {"applied_index": 10})] + [("journal", {"pad": "x" * 1000})] * 100
    with pytest.raises(SnapshotNotWritten) as caught:
        await asyncio.to_thread(write_snapshot, store.snapshot_dir, SnapshotMeta(10, 2, CONFIG), big)
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert str(caught.value) == ("writing the snapshot at index 10 failed: No space left on device; "
                                 "the previous snapshot and the log are kept")
    assert _files(full_snapshot_dir) == ["snap-5-1.jsonl"]   # no temporary file left to fill the disk
    # The store goes on, and reopens as it was.
    await store.save(HardState(2, "a", 12), _entries(11, 12, 2))
    await store.close()
    again = await open_store(path, check=True)
    assert (again.first_index(), again.last_index(), again.snapshot_file()) == (6, 12, previous)
    assert again.entries(6, 11) == entries[5:]
    assert await asyncio.to_thread(verify_snapshot, previous.path) == previous
    await again.close()
