"""A node checks its data dir before it serves: a damaged ``raft.db`` and an identity without its
log are refused at once with what to do, and ``--new-identity`` is the explicit way on."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from tests.conftest import NodeProcess, free_port
from tests.node.exits import port_is_free, run_node
from tests.node.helpers import stub, submit, watch_until_end

PAGE = 4096   # SQLite's default page size, which raft.db uses


def _truncate(size: Callable[[int], int]) -> Callable[[Path], None]:
    def damage(db: Path) -> None:
        with open(db, "r+b") as f:
            f.truncate(size(db.stat().st_size))
    return damage


def _overwrite_block(db: Path) -> None:
    offset = db.stat().st_size // 2 // PAGE * PAGE
    with open(db, "r+b") as f:
        f.seek(offset)
        f.write(random.Random(19).randbytes(PAGE))


DAMAGE = {
    "truncated to half": _truncate(lambda n: n // 2),
    "cut by a page": _truncate(lambda n: n - PAGE),
    "cut by 1000 bytes": _truncate(lambda n: n - 1000),
    "a 4 KiB block overwritten in the middle": _overwrite_block,
}


@pytest.fixture(scope="module")
def used_data_dir(tmp_path_factory: pytest.TempPathFactory, insurance_csv: Path) -> Iterator[Path]:
    """The data dir of a node stopped cleanly after one job (its log is a few hundred entries)."""
    node = NodeProcess(tmp_path_factory.mktemp("used") / "node", "--slots", "1", "--no-mdns").start()
    try:
        s = stub(node.address)
        job, _ = watch_until_end(s, submit(s, insurance_csv, "charges", max_trials=1).job_id)
        assert job.state == pb.COMPLETED, job.message
    finally:
        assert node.stop() == 0
    assert not (node.data_dir / "raft.db-wal").exists()   # checkpointed: raft.db holds it all
    yield node.data_dir


def _copy(data_dir: Path, to: Path) -> Path:
    shutil.copytree(data_dir, to, ignore=shutil.ignore_patterns("node.lock"))
    return to


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_log_stops_the_node_at_once_saying_what_to_do(used_data_dir, tmp_path, kind):
    data_dir = _copy(used_data_dir, tmp_path / "node")
    DAMAGE[kind](data_dir / "raft.db")
    port = free_port()
    out = run_node(data_dir, port=port)
    assert out.code == 2, out.stderr[-2000:]
    assert len(out.lines) == 1, out.stderr[-2000:]
    line = out.lines[0]
    assert f"{data_dir / 'raft.db'} is damaged" in line
    assert "from a backup" in line and "--new-identity" in line
    assert "Traceback" not in out.stderr
    assert port_is_free(port)
    # Nothing was changed: the operator can still take the file elsewhere to salvage it.
    assert (data_dir / "node_id").read_text() == (used_data_dir / "node_id").read_text()


def test_force_new_cluster_on_a_damaged_log_gives_the_same_message(used_data_dir, tmp_path):
    data_dir = _copy(used_data_dir, tmp_path / "node")
    DAMAGE["truncated to half"](data_dir / "raft.db")
    out = run_node(data_dir, "--force-new-cluster")
    assert out.code == 2
    assert "cannot force a new cluster" in out.stderr and "is damaged" in out.stderr
    assert "--new-identity" in out.stderr and "Traceback" not in out.stderr


def test_new_identity_sets_a_damaged_log_aside_and_starts_empty(used_data_dir, tmp_path):
    data_dir = _copy(used_data_dir, tmp_path / "node")
    DAMAGE["cut by a page"](data_dir / "raft.db")
    old_id = (data_dir / "node_id").read_text().strip()
    node = NodeProcess(data_dir, "--new-identity", "--no-mdns").start()
    try:
        new_id = (data_dir / "node_id").read_text().strip()
        assert new_id != old_id
        assert stub(node.address).ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []
        (retired,) = data_dir.glob(f"retired-{old_id}-*")
        assert (retired / "raft.db").is_file() and (retired / "blobs").is_dir()
    finally:
        assert node.stop() == 0
    # The flag does nothing to a healthy data dir: left in a service file, it is harmless.
    node.start()
    try:
        assert (data_dir / "node_id").read_text().strip() == new_id
    finally:
        node.stop()


@pytest.mark.parametrize("log", ["missing", "empty"])
def test_an_old_identity_without_its_log_is_refused_and_new_identity_starts(node_factory, log):
    node = node_factory("node", "--no-mdns").start()
    node.stop()
    old_id = (node.data_dir / "node_id").read_text().strip()
    for name in ("raft.db", "raft.db-wal", "raft.db-shm"):
        (node.data_dir / name).unlink(missing_ok=True)
    if log == "empty":
        (node.data_dir / "raft.db").touch()
    out = run_node(node.data_dir)
    assert out.code == 2, out.stderr[-2000:]
    (line,) = out.lines
    assert f"node {old_id}'s id" in line and f"raft.db is {log}" in line
    assert "--new-identity" in line and "Traceback" not in out.stderr
    assert (node.data_dir / "node_id").read_text().strip() == old_id   # nothing changed
    # Never a new cluster under the old id: only the explicit flag starts it, as someone new.
    node.extra.append("--new-identity")
    node.start()
    assert (node.data_dir / "node_id").read_text().strip() != old_id
    assert stub(node.address).GetCluster(pb.GetClusterRequest(), timeout=10).nodes[0].node_id != old_id


def test_blobs_without_a_log_are_refused(used_data_dir, tmp_path):
    data_dir = _copy(used_data_dir, tmp_path / "node")
    (data_dir / "raft.db").unlink()
    (data_dir / "node_id").unlink()
    out = run_node(data_dir)
    assert out.code == 2
    assert "blobs but no Raft log" in out.lines[0]
