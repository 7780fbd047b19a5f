"""Snapshots and log compaction on real node processes (issue 23).

Nodes run with a tiny ``--snapshot-entries`` so that a short history, written by plain Optuna
clients through the nodes' StorageService, compacts the log several times. What a user relies
on: a member that missed entries the others compacted away, and a brand-new member, catch up by
snapshot and then serve every study trial for trial like the others; a node restarted after
compaction, or killed while it wrote a snapshot, loses nothing it had acknowledged.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nexus_node.study.proxy import NexusStorageProxy
from tests.clusters import caught_up, cluster_until, three_voters
from tests.conftest import NodeProcess, free_port

pytestmark = pytest.mark.timeout(300)
optuna.logging.set_verbosity(optuna.logging.ERROR)   # the failed trials are on purpose

SNAP = ("--snapshot-entries", "25", "--snapshot-tail", "6")


def metric(node: NodeProcess, name: str) -> float:
    port = node.metrics_port   # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in (name, name + "_total"):
                return s.value
    raise AssertionError(f"no {name} in the scrape of {node.address}")


def storage(node: NodeProcess) -> NexusStorageProxy:
    host, port = node.address.rsplit(":", 1)
    return NexusStorageProxy(host=host, port=int(port))


def write_history(node: NodeProcess, tag: str, studies: int = 2, trials: int = 6) -> None:
    """Studies with every kind of trial data: parameters of several distributions, intermediate
    values, user attributes, pruned and failed trials, study attributes."""
    for s in range(studies):
        study = optuna.create_study(study_name=f"{tag}-{s}", storage=storage(node),
                                    directions=["minimize"] if s % 2 == 0 else ["minimize", "maximize"])
        study.set_user_attr("owner", tag)

        def objective(trial: optuna.Trial):
            x = trial.suggest_float("x", -4, 4)
            kind = trial.suggest_categorical("kind", ["a", "b", "c"])
            n = trial.suggest_int("n", 1, 9, log=True)
            trial.set_user_attr("kind_n", f"{kind}{n}")
            if trial.number % 5 == 4:
                raise RuntimeError("a failed trial")
            if len(study.directions) == 1:
                for step in range(3):
                    trial.report(x * x + step, step)
                if trial.number % 5 == 3:
                    raise optuna.TrialPruned()
                return x * x
            return x * x, float(n)
        study.optimize(objective, n_trials=trials, catch=(RuntimeError,))


def dump(node: NodeProcess) -> dict[str, object]:
    """Every study the node's StorageService serves, trial for trial."""
    st = storage(node)
    out: dict[str, object] = {}
    for summary in optuna.get_all_study_summaries(st, include_best_trial=False):
        if summary.study_name == "test-barrier":
            continue   # caught_up's: each node last wrote its own value
        study = optuna.load_study(study_name=summary.study_name, storage=st)
        study_id = st.get_study_id_from_name(summary.study_name)
        out[summary.study_name] = (
            study_id, [d.name for d in study.directions], study.user_attrs, st.get_study_system_attrs(study_id),
            [(st.get_trial_id_from_study_id_trial_number(study_id, t.number), t.number, t.state.name, t.values, t.params, t.distributions, t.intermediate_values,
              t.user_attrs, t.system_attrs, t.datetime_start, t.datetime_complete)
             for t in study.get_trials(deepcopy=False)])
    return out


def start_nodes(node_factory, names: list[str], *extra: str, seeds: list[int] | None = None) -> list[NodeProcess]:
    ports = seeds or [free_port() for _ in names]
    listed = ",".join(f"127.0.0.1:{p}" for p in ports)
    nodes = []
    for name, port in zip(names, ports):
        metrics_port = free_port()
        node = node_factory(name, "--slots", "1", "--seeds", listed, "--no-mdns", "--metrics-port",
                            str(metrics_port), *extra, port=port)
        node.metrics_port = metrics_port   # type: ignore[attr-defined]
        nodes.append(node.start())
    return nodes


def until(predicate, what: str, timeout: float = 60.0) -> None:
    """Polls a node's own figures (metrics) until ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.2)


def test_members_that_lack_compacted_entries_catch_up_by_snapshot(node_factory) -> None:
    nodes = start_nodes(node_factory, ["n0", "n1", "n2"], *SNAP)
    cluster_until(nodes[0].address, three_voters)
    write_history(nodes[0], "before", studies=1, trials=3)
    down = nodes[2]
    held_at_kill = metric(down, "nexus_raft_applied_index")
    down.kill()
    # The two others compact at least three times past what the killed node holds.
    taken_before = {n.address: metric(n, "nexus_snapshots_taken") for n in nodes[:2]}
    rounds = 0
    while min(metric(n, "nexus_snapshots_taken") - taken_before[n.address] for n in nodes[:2]) < 3 or \
            min(metric(n, "nexus_raft_first_index") for n in nodes[:2]) <= held_at_kill + 1:
        write_history(nodes[rounds % 2], f"while-down-{rounds}", studies=1, trials=3)
        rounds += 1
        assert rounds < 20, "the live nodes do not compact"
    down.start()
    for node in (down, *nodes[:2]):
        caught_up(node.address)
    assert metric(down, "nexus_snapshots_installed") >= 1
    assert dump(down) == dump(nodes[0]) == dump(nodes[1])

    # A brand-new node joins by snapshot too, and serves every study like the others.
    metrics_port = free_port()
    new = node_factory("n3", "--slots", "1", "--seeds", nodes[0].address, "--no-mdns",
                       "--metrics-port", str(metrics_port), *SNAP)
    new.metrics_port = metrics_port   # type: ignore[attr-defined]
    new.start()
    cluster_until(nodes[0].address, lambda v: any(n.address == new.address for n in v.nodes))
    for node in (new, nodes[0]):
        caught_up(node.address)
    assert metric(new, "nexus_snapshots_installed") >= 1
    assert metric(new, "nexus_raft_first_index") > 1
    assert dump(new) == dump(nodes[0])
    # And the cluster goes on writing through the new member.
    write_history(new, "after", studies=1, trials=2)
    caught_up(nodes[0].address)
    assert dump(new) == dump(nodes[0])


def test_a_restart_after_compaction_loses_nothing(node_factory) -> None:
    [node] = start_nodes(node_factory, ["solo"], *SNAP)
    write_history(node, "hist", studies=3, trials=6)
    until(lambda: metric(node, "nexus_snapshots_taken") >= 2, "two snapshots")
    assert metric(node, "nexus_raft_first_index") > 1
    before = dump(node)
    assert node.stop() == 0
    node.start()
    assert dump(node) == before
    node.kill()
    node.start()
    assert dump(node) == before
    write_history(node, "more", studies=1, trials=2)   # and it goes on
    assert set(dump(node)) == set(before) | {"more-0"}


def test_a_node_killed_while_writing_a_snapshot_starts_again_cleanly(node_factory, tmp_path: Path) -> None:
    # A history long enough that writing its snapshot takes a while, written without snapshots.
    [node] = start_nodes(node_factory, ["solo"], "--snapshot-entries", "0")
    write_history(node, "big", studies=4, trials=40)
    acknowledged = dump(node)
    node.stop()
    node.extra += ["--snapshot-entries", "30"]
    node.start()
    snapshots = node.data_dir / "snapshots"
    killed = threading.Event()

    def kill_when_writing() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed.is_set():
            if snapshots.is_dir() and any(p.name.endswith(".tmp") for p in os.scandir(snapshots)):
                node.kill()
                killed.set()
                return
            time.sleep(0.001)
    watcher = threading.Thread(target=kill_when_writing)
    watcher.start()
    try:
        write_history(node, "late", studies=1, trials=20)
    except Exception:  # noqa: BLE001 - the node was killed under the writes
        pass
    watcher.join()
    assert killed.is_set(), "the node never wrote a snapshot"
    assert any(p.name.endswith(".tmp") for p in os.scandir(snapshots)), "killed after the write ended"
    node.start()
    restored = dump(node)
    for name, study in acknowledged.items():
        assert restored[name] == study
    assert not any(p.name.endswith(".tmp") for p in os.scandir(snapshots))
    write_history(node, "after", studies=1, trials=2)
    assert "after-0" in dump(node)
