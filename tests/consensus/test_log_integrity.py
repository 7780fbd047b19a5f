"""The log store refuses a log it could not have written, and the data dir's identity rules
(nexus_node/consensus/integrity.py), without a node process."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from nexus_node.consensus.integrity import StartRefused, adopt_identity, check_data_dir
from nexus_node.consensus.log_store import LogDamaged, LogFile, RaftLogStore, inspect
from nexus_node.consensus.raft import Entry, EntryType, HardState


async def _log(path: Path) -> None:
    store = await RaftLogStore.open(path)
    await store.save(HardState(2, "a", 2), [Entry(1, 1, EntryType.CONFIG, b'{"voters":["a"]}'),
                                            Entry(2, 2, data=b"x"), Entry(3, 2, data=b"y")])
    await store.close()


def _sql(path: Path, statement: str, *args: object) -> None:
    with sqlite3.connect(path) as db:
        db.execute(statement, args)


@pytest.mark.parametrize("statement, args, problem", [
    ("UPDATE raft_hard_state SET term = ?", (-1,), "term is -1"),
    ("UPDATE raft_hard_state SET term = ?", (1 << 62,), "term is 4611686018427387904"),
    # (SQLite's column affinity turns "2" into 2 and 7 into "7": these it keeps as they are.)
    ("UPDATE raft_hard_state SET term = ?", ("two",), "term is 'two'"),
    ("UPDATE raft_hard_state SET vote = ?", (b"ab",), "vote is b'ab'"),
    ("UPDATE raft_hard_state SET commit_index = ?", (4,), "commit index 4 is past the last entry, 3"),
    ("UPDATE raft_log SET term = ? WHERE idx = 3", (1,), r"entry 3 has term 1 \(after term 2\)"),
    ("DELETE FROM raft_log WHERE idx = ?", (2,), "gap before index 3|indexes 1 to 2"),
    ("UPDATE raft_log SET type = ? WHERE idx = 2", ("nonsense",), "entry 2 cannot be read"),
])
async def test_a_log_with_an_impossible_hard_state_or_entry_is_refused(tmp_path, statement, args, problem):
    path = tmp_path / "raft.db"
    await _log(path)
    _sql(path, statement, *args)
    with pytest.raises(LogDamaged, match=problem):
        await RaftLogStore.open(path, check=True)
    with pytest.raises(LogDamaged, match=problem):
        await RaftLogStore.open(path)   # loading checks the same, without the page scan


async def test_inspect_tells_missing_empty_and_held_apart(tmp_path):
    path = tmp_path / "raft.db"
    assert await inspect(path) is LogFile.MISSING
    path.touch()
    assert await inspect(path) is LogFile.EMPTY
    await (await RaftLogStore.open(path)).close()   # the schema, no rows: still empty
    assert await inspect(path) is LogFile.EMPTY
    path.unlink()
    await _log(path)
    assert await inspect(path) is LogFile.HELD
    path.write_bytes(b"not a database at all" * 300)
    with pytest.raises(LogDamaged, match="not a database"):
        await inspect(path)


async def test_a_new_node_keeps_its_drawn_id_until_it_has_a_log(tmp_path):
    # Stopped before founding or joining (a busy port, a join window cut short): same id again.
    first = await check_data_dir(tmp_path)
    assert not first.has_log and not (tmp_path / "node_id").exists()
    assert (await check_data_dir(tmp_path)).node_id == first.node_id
    await _log(tmp_path / "raft.db")
    # Stopped after its first log write but before adopting the id: adopted at the next start.
    again = await check_data_dir(tmp_path)
    assert again == type(again)(first.node_id, True)
    assert (tmp_path / "node_id").read_text().strip() == first.node_id
    assert adopt_identity(tmp_path) == first.node_id


async def test_a_log_without_an_id_is_refused(tmp_path):
    await _log(tmp_path / "raft.db")
    with pytest.raises(StartRefused, match="a Raft log but no node id"):
        await check_data_dir(tmp_path)
    fresh = await check_data_dir(tmp_path, new_identity=True)
    assert fresh.retired is not None and (fresh.retired / "raft.db").is_file()
    assert not fresh.has_log and not (tmp_path / "raft.db").exists()
