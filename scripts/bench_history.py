"""A cluster with a long history against the same cluster with none (issue 23), in one run.

Three nodes are formed from --seeds. Plain Optuna clients (one process per node, Optuna's own
``GrpcStorageProxy`` on each node's StorageService) then write ``--studies`` studies of
``--trials`` finished trials each (each trial one write: Optuna's ``add_trial``), and as many
jobs are submitted and cancelled (job records, through NexusService). Measured twice, on the
empty cluster and after the history, the same way:

* idle RSS of each node process (and of its runners), a few seconds after the last write;
* restart to serving: one node is stopped (SIGTERM) and started again on its data dir; the
  time from the new process to its StorageService listing every study and serving the last
  one's trials (every study's trials are then checked, untimed: a call per study is the
  client's cost, not the node's);
* a new node joined and serving every study (same measure, a fourth node with an empty dir);
* ``raft.db`` and ``snapshots/`` bytes per node; the snapshot's bytes per trial.

Targets (issue 23): idle RSS at most 1.1x the empty cluster's and at most 100 MB; restart at
most 2 s and 1.2x; join at most 5 s; raft.db bounded by the live state plus the tail.

Usage: scripts/bench history [--studies 300] [--trials 100] [--snapshot-entries N]
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import optuna  # noqa: E402

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb  # noqa: E402
from scripts.bench_mesh import Node, free_port, report, stub, three_voters, view_until  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

#: One client process: writes its share of the studies through one node, one write per trial.
WRITER = """
import sys, datetime, warnings, optuna
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)
from optuna.distributions import FloatDistribution, CategoricalDistribution
from optuna.storages import GrpcStorageProxy
from optuna.trial import create_trial
host, port, first, count, trials = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
storage = GrpcStorageProxy(host=host, port=port)
start = datetime.datetime(2026, 1, 1)
for s in range(first, first + count):
    study = optuna.create_study(study_name=f"history-{s:04d}", storage=storage)
    study.set_user_attr("owner", f"client-{first}")
    for t in range(trials):
        x = (s * 7919 + t * 104729) % 1000 / 1000
        study.add_trial(create_trial(
            params={"x": x, "kind": "ab"[t % 2]},
            distributions={"x": FloatDistribution(0, 1), "kind": CategoricalDistribution(["a", "b"])},
            value=x * x, intermediate_values={0: x, 1: x * x},
            user_attrs={"epochs": t % 50}, system_attrs={"fold": t % 5}))
print("done", flush=True)
"""

CSV = b"a,b,y\n" + b"".join(f"{i},{i % 7},{i % 3}\n".encode() for i in range(40))


def rss_mb(pid: int) -> tuple[float, float]:
    """(the process's RSS, its children's) in MB, from /proc."""
    def one(p: int) -> float:
        try:
            with open(f"/proc/{p}/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
        except (OSError, StopIteration):
            return 0.0
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return one(pid), sum(one(int(c)) for c in children)


def serves(address: str, studies: int, trials: int, timeout: float, every: bool = False) -> float:
    """Polls the node's StorageService until it lists ``studies`` studies and serves the last
    one's ``trials`` trials (``every``: every study's, which costs the client a call per study,
    so it is not what the timed figures wait for); returns when (perf_counter)."""
    from optuna.storages import GrpcStorageProxy
    host, port = address.rsplit(":", 1)
    deadline = time.perf_counter() + timeout
    while True:
        try:
            storage = GrpcStorageProxy(host=host, port=int(port))
            listed = sorted(s.study_name for s in storage.get_all_studies() if s.study_name.startswith("history-"))
            if len(listed) == studies and all(
                    len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)) == trials
                    for name in (listed if every else listed[-1:])):
                return time.perf_counter()
        except (grpc.RpcError, KeyError, RuntimeError):
            pass
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{address} did not serve {studies} studies within {timeout} s")
        time.sleep(0.05)


def write_history(nodes: list[Node], studies: int, trials: int) -> float:
    per = -(-studies // len(nodes))
    procs = []
    for i, node in enumerate(nodes):
        host, port = node.address.rsplit(":", 1)
        count = max(0, min(per, studies - i * per))
        procs.append(subprocess.Popen([sys.executable, "-c", WRITER, host, port, str(i * per), str(count),
                                       str(trials)], stdout=subprocess.PIPE, text=True))
    started = time.perf_counter()
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "done", "a writer failed"
        p.wait(60)
    seconds = time.perf_counter() - started
    # Job records: submitted and cancelled through NexusService.
    s = stub(nodes[0].address)
    for j in range(studies):
        spec = pb.JobSpec(target="y", use_case=f"history job {j}", filename="t.csv", max_trials=1)
        reply = s.SubmitJob(iter([pb.SubmitJobRequest(spec=spec), pb.SubmitJobRequest(chunk=CSV)]))
        s.CancelJob(pb.CancelJobRequest(job_id=reply.job_id))
    return seconds


def dir_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def measure(tmp: Path, studies: int, trials: int, snapshot_entries: int) -> dict:
    extra = ("--snapshot-entries", str(snapshot_entries), "--slots", "1")
    ports = [free_port() for _ in range(3)]
    seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
    nodes = [Node(tmp / f"n{i}", p, seeds, *extra).start() for i, p in enumerate(ports)]
    out: dict = {"studies": studies, "trials_per_study": trials}
    try:
        view_until(nodes[0].address, three_voters)
        if studies:
            out["write_seconds"] = write_history(nodes, studies, trials)
        for n in nodes:
            serves(n.address, studies, trials, 600, every=True)
        time.sleep(5)   # idle
        out["rss_mb"] = [rss_mb(n.proc.pid)[0] for n in nodes]          # type: ignore[union-attr]
        out["runners_rss_mb"] = [rss_mb(n.proc.pid)[1] for n in nodes]  # type: ignore[union-attr]
        out["raft_db_bytes"] = [dir_bytes(n.data_dir / "raft.db") + dir_bytes(n.data_dir / "raft.db-wal")
                                for n in nodes]
        out["snapshot_bytes"] = [dir_bytes(n.data_dir / "snapshots") for n in nodes]
        # Restart to serving: a follower (the coordinator keeps its job).
        view = stub(nodes[0].address).GetCluster(pb.GetClusterRequest())
        follower = next(n for n in nodes if n.address != next(
            x.address for x in view.nodes if x.role == pb.COORDINATOR))
        follower.stop()
        started = time.perf_counter()
        follower.start()
        out["restart_seconds"] = serves(follower.address, studies, trials, 120) - started
        serves(follower.address, studies, trials, 300, every=True)
        # A new node joined and serving every study.
        new = Node(tmp / "n3", free_port(), seeds, *extra)
        started = time.perf_counter()
        new.start()
        nodes.append(new)
        out["join_seconds"] = serves(new.address, studies, trials, 300) - started
        serves(new.address, studies, trials, 300, every=True)   # and, untimed, every study
    finally:
        for n in nodes:
            n.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=("history",))
    ap.add_argument("--studies", type=int, default=300)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--snapshot-entries", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "history.json")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as t:
        empty = measure(Path(t) / "empty", 0, a.trials, a.snapshot_entries)
    with tempfile.TemporaryDirectory() as t:
        full = measure(Path(t) / "full", a.studies, a.trials, a.snapshot_entries)
    total_trials = a.studies * a.trials
    per_trial = max(full["snapshot_bytes"]) / total_trials if total_trials else 0.0
    rss_ratio = max(full["rss_mb"]) / max(empty["rss_mb"])
    rows = [("figure", "empty / history", "target"),
            ("history", f"{a.studies} studies x {a.trials} trials, {a.studies} jobs; written in "
             f"{full.get('write_seconds', 0):.0f} s", ""),
            ("idle RSS per node, MB", f"{max(empty['rss_mb']):.0f} / {max(full['rss_mb']):.0f} "
             f"({rss_ratio:.2f}x)", "<= 1.1x and <= 100"),
            ("  runners' RSS per node, MB", f"{max(empty['runners_rss_mb']):.0f} / {max(full['runners_rss_mb']):.0f}", ""),
            ("restart to serving every study, s", f"{empty['restart_seconds']:.2f} / {full['restart_seconds']:.2f} "
             f"({full['restart_seconds'] / empty['restart_seconds']:.2f}x)", "<= 2 and <= 1.2x"),
            ("new node joined and serving every study, s", f"{empty['join_seconds']:.2f} / {full['join_seconds']:.2f}",
             "<= 5"),
            ("raft.db per node, MB", f"{max(empty['raft_db_bytes']) / 1e6:.2f} / {max(full['raft_db_bytes']) / 1e6:.2f}",
             "live state + tail"),
            ("snapshot per node, MB; bytes per trial", f"{max(full['snapshot_bytes']) / 1e6:.2f}; {per_trial:.0f}", "")]
    report(rows, {"history": {"empty": empty, "full": full, "snapshot_bytes_per_trial": per_trial,
                              "date": datetime.date.today().isoformat()}}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
