"""Crash-only nodes, on real processes: a node that cannot go on says why in one line and exits
non-zero, promptly; a restart (a supervisor's) is safe and keeps what was committed. Also: a
nearly full disk refuses uploads first, SIGTERM always ends a node, one node per port."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from tests.conftest import NodeProcess
from tests.node.exits import port_is_free, run_node
from tests.node.helpers import nexus, rpc_error, stub, submit, submit_requests, watch_until

DISK_FULL = "nexus-node: stopping: the consensus loop failed: database or disk is full"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs of the test's own (root only: skipped where mounting is not allowed)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def _fill(path: Path) -> None:
    """Writes ``path`` until its filesystem has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 1 << 12, 1 << 9, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def _exit_within(node: NodeProcess, seconds: float) -> tuple[int, float]:
    assert node.proc is not None
    started = time.monotonic()
    try:
        code = node.proc.wait(seconds)
    except subprocess.TimeoutExpired:
        node.kill()
        raise AssertionError(f"the node did not exit within {seconds} s; log:\n{node.log.read_text()[-3000:]}") from None
    return code, time.monotonic() - started


def test_a_full_disk_stops_the_node_and_a_restart_keeps_what_was_committed(small_fs, tmp_path, insurance_csv):
    node = NodeProcess(small_fs / "node", "--slots", "1", "--no-mdns", "--min-free-mb", "1")
    node.log = tmp_path / "node.log"   # not on the disk that fills: the reason must get out
    node.start()
    try:
        s = stub(node.address)
        job_id = submit(s, insurance_csv, "charges", max_trials=60).job_id
        watch_until(s, job_id, lambda ev: ev.kind == pb.TRIAL_FINISHED)
        before = {t.number: (t.state, t.value) for t in s.ListTrials(pb.ListTrialsRequest(job_id=job_id)).trials
                  if t.state == "COMPLETE"}
        assert before
        _fill(small_fs / "filler")   # the search goes on writing its study into the log
        code, seconds = _exit_within(node, 60)
        log = node.log.read_text()
        assert code == 1, log[-3000:]
        assert DISK_FULL in log.splitlines(), log[-3000:]
        assert port_is_free(node.port)

        (small_fs / "filler").unlink()   # space is back: a plain restart serves again
        node.start()
        s = stub(node.address)
        assert [j.job_id for j in s.ListJobs(pb.ListJobsRequest(), timeout=10).jobs] == [job_id]
        after = {t.number: (t.state, t.value) for t in s.ListTrials(pb.ListTrialsRequest(job_id=job_id)).trials}
        assert {n: after.get(n) for n in before} == before   # every trial committed before is kept
    finally:
        node.stop()


def test_a_nearly_full_disk_refuses_uploads_first_and_says_so(node_factory, insurance_csv):
    # A margin larger than any disk here: the node is "nearly full" from the start.
    node = node_factory("node", "--no-mdns", "--min-free-mb", str(1 << 40)).start()
    s = stub(node.address)
    err = rpc_error(s.SubmitJob, submit_requests(pb.JobSpec(target="charges"), insurance_csv.read_bytes()),
                    timeout=30)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(node.data_dir) in err.details() and "MiB free" in err.details(), err.details()
    err = rpc_error(s.Predict, iter([pb.PredictRequest(model_id="m"), pb.PredictRequest(chunk=b"a\n1\n")]),
                    timeout=30)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not list((node.data_dir / "blobs" / "tmp").iterdir())   # not a byte stored
    assert s.ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []
    proc = nexus(node.address, "cluster", "--json")
    assert proc.returncode == 0, proc.stderr
    (me,) = json.loads(proc.stdout)["nodes"]
    assert me["disk_low"] is True and me["disk_free_bytes"] > 0
    assert "LOW" in nexus(node.address, "cluster").stdout


def test_an_upload_larger_than_the_free_disk_is_refused_with_the_room_it_needs(small_fs, tmp_path, insurance_csv):
    """Issue 24: a file the node's disk cannot hold is refused before anything is committed,
    saying how much room it needs: at once when the client says its size (the CLI and
    NexusClient do), else as soon as the stream passes the room there is."""
    node = NodeProcess(small_fs / "node", "--slots", "1", "--no-mdns", "--min-free-mb", "2")
    node.log = tmp_path / "node.log"
    node.start()
    try:
        s = stub(node.address)
        big = tmp_path / "big.csv"   # on the test's own disk: larger than the node's 20 MB tmpfs
        row = insurance_csv.read_bytes().split(b"\n", 1)[1]
        with open(big, "wb") as f:
            f.write(insurance_csv.read_bytes())
            while f.tell() < 30 << 20:
                f.write(row)
        size = big.stat().st_size
        # Said up front: refused before a byte of it is sent.
        err = rpc_error(s.SubmitJob, iter([pb.SubmitJobRequest(spec=pb.JobSpec(target="charges", size_bytes=size))]),
                        timeout=30)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        assert f"the upload of {size / 2**20:.1f} MiB does not fit" in err.details(), err.details()
        assert "MiB more" in err.details() and "--min-free-mb" in err.details()
        # Not said: refused once the stream passes the room, its partial file removed.
        err = rpc_error(s.SubmitJob, submit_requests(pb.JobSpec(target="charges"), big.read_bytes()), timeout=60)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "does not fit" in err.details(), err.details()
        proc = nexus(node.address, "submit", str(big), "--target", "charges")
        assert proc.returncode != 0 and "does not fit" in proc.stderr, proc.stderr
        assert not list((node.data_dir / "blobs" / "tmp").iterdir())
        assert s.ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []
        # The node is fine, and a file that fits goes through.
        assert submit(s, insurance_csv, "charges", max_trials=1).job_id
    finally:
        node.stop()


def test_a_second_node_on_a_busy_port_fails_naming_the_port(node_factory, tmp_path):
    first = node_factory("first", "--no-mdns").start()
    out = run_node(tmp_path / "second", port=first.port)
    assert out.code == 1, out.stderr[-2000:]
    assert out.lines == [f"nexus-node: cannot listen on 127.0.0.1:{first.port}: port {first.port} is in use "
                         f"(another node or program listens there): stop it or pass another --port"]
    # Every call still reaches the first node's cluster, not one of two.
    s = stub(first.address)
    assert {s.GetCluster(pb.GetClusterRequest(), timeout=10).coordinator_id for _ in range(8)} == \
        {(first.data_dir / "node_id").read_text().strip()}
    # The second data dir is not spoiled by the failed start: it starts on a free port.
    node_factory("second", "--no-mdns").start()


def test_sigterm_ends_a_busy_node_within_its_grace(node_factory, insurance_csv):
    node = node_factory("node", "--slots", "2", "--no-mdns", "--stop-timeout", "8").start()
    s = stub(node.address)
    job_id = submit(s, insurance_csv, "charges", max_trials=50).job_id
    watch = s.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=120)   # a stream held open
    next(ev for ev in watch if ev.kind == pb.TRIAL_FINISHED)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    code, seconds = _exit_within(node, 8 + 5)
    assert code == 0 and seconds < 8 + 2, (code, seconds)


def test_a_stop_that_hangs_still_ends_the_process_at_its_deadline():
    # node_main's hard deadline: a daemon timer, so a wedged loop (or thread) cannot hold it up.
    code = ("import time; from nexus_node.node.main import _exit_at; "
            "_exit_at(0.5, 1, 'stopping took longer than --stop-timeout'); time.sleep(60)")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and time.monotonic() - started < 20
    assert done.stderr.strip() == "nexus-node: stopping took longer than --stop-timeout (0.5 s); exiting now"
