"""mDNS discovery across hosts: network namespaces joined by a bridge (needs root).

The hosts are :mod:`tests.netns`'s namespaces on one bridge. Two probes of cluster ``lab``
must find each other with no seeds; a probe of cluster ``other`` on the same link must be heard
and refused by both, and must admit neither.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests import netns

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 20.0


@pytest.fixture
def bridged_hosts() -> Iterator[list[tuple[str, str]]]:
    """Three namespaces on one bridge: [(namespace, address)], removed afterwards."""
    with netns.bridged_hosts(3) as bridge:
        yield [(h.ns, h.address) for h in bridge.hosts]


def probe(ns: str, address: str, cluster: str, node_id: str, expect: str, refuse: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.cluster.discovery_probe",
         "--host", address, "--cluster", cluster, "--node-id", node_id, "--expect", expect,
         "--refuse", refuse, "--timeout", str(DEADLINE_S)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_reports(procs: dict[str, subprocess.Popen[str]]) -> dict[str, dict]:
    """Each probe's JSON line; a probe prints by its own deadline, so this is bounded."""
    reports: dict[str, dict] = {}
    end = time.monotonic() + DEADLINE_S + 15   # + interpreter start-up
    while len(reports) < len(procs) and time.monotonic() < end:
        waiting = {p.stdout: name for name, p in procs.items() if name not in reports}
        ready, _, _ = select.select(list(waiting), [], [], end - time.monotonic())
        for stream in ready:
            line = stream.readline()
            name = waiting[stream]
            if not line:
                pytest.fail(f"probe {name} exited: {procs[name].stderr.read()[-2000:]}")
            reports[name] = json.loads(line)
    return reports


def test_nodes_of_one_cluster_find_each_other_by_mdns_and_another_cluster_stays_out(bridged_hosts):
    (ns_a, ip_a), (ns_b, ip_b), (ns_c, ip_c) = bridged_hosts
    procs = {
        "a": probe(ns_a, ip_a, "lab", "node-a", expect="node-b", refuse="node-c"),
        "b": probe(ns_b, ip_b, "lab", "node-b", expect="node-a", refuse="node-c"),
        "c": probe(ns_c, ip_c, "other", "node-c", expect="", refuse="node-a,node-b"),
    }
    try:
        reports = read_reports(procs)
    finally:
        for p in procs.values():   # closing stdin ends a probe (goodbye packets, then exit)
            p.stdin.close()
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    assert set(reports) == {"a", "b", "c"}, reports
    assert reports["a"]["peers"] == [{"node_id": "node-b", "address": f"{ip_b}:7070", "source": "mdns"}]
    assert reports["b"]["peers"] == [{"node_id": "node-a", "address": f"{ip_a}:7070", "source": "mdns"}]
    assert reports["c"]["peers"] == []
    assert reports["a"]["refused"]["node-c"] == "cluster 'other', not 'lab'"
    assert reports["b"]["refused"]["node-c"] == "cluster 'other', not 'lab'"
    assert reports["c"]["refused"]["node-a"] == "cluster 'lab', not 'other'"
    assert all(r["ok"] and r["registered"] for r in reports.values()), reports


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, *argv]


def cluster_json(ns: str, address: str, token: Path) -> dict:
    proc = subprocess.run(in_ns(ns, "-m", "nexus_client.cli", "--connect", address, "--token-file", str(token),
                                "cluster", "--json"), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_real_nodes_with_no_seeds_form_one_cluster_by_mdns_and_another_cluster_stays_out(bridged_hosts, tmp_path):
    (ns_a, ip_a), (ns_b, ip_b), (ns_c, ip_c) = bridged_hosts
    token = tmp_path / "token"
    token.write_text("netns-cluster-token\n")
    procs: list[subprocess.Popen[str]] = []

    def node(ns: str, address: str, cluster: str) -> None:
        proc = subprocess.Popen(
            in_ns(ns, "-m", "nexus_node.node.main", "--host", address, "--port", "7070", "--slots", "1",
                  "--data-dir", str(tmp_path / ns), "--token-file", str(token), "--cluster", cluster,
                  "--join-window", "5"),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        # The node prints its "listening" line once it founded or joined a cluster.
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and "listening on" in proc.stdout.readline(), f"node in {ns} did not start"

    try:
        node(ns_a, ip_a, "lab")
        node(ns_b, ip_b, "lab")
        node(ns_c, ip_c, "other")
        for ns, ip_ in ((ns_a, ip_a), (ns_b, ip_b)):
            view = cluster_json(ns, f"{ip_}:7070", token)
            assert sorted(n["address"] for n in view["nodes"]) == sorted([f"{ip_a}:7070", f"{ip_b}:7070"]), view
            assert view["coordinator_id"]
        other = cluster_json(ns_c, f"{ip_c}:7070", token)
        assert [n["address"] for n in other["nodes"]] == [f"{ip_c}:7070"], other
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
