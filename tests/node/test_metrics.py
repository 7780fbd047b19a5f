"""``--metrics-port``: a real node's Prometheus endpoint, scraped over HTTP while it runs a job.

Each scrape's values are compared with what the node says of itself over gRPC (GetCluster,
GetJob); ``promtool check metrics`` (Debian's ``prometheus`` package, installed by .ci/run)
checks the text against Prometheus' own rules.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.node.main import parse_args
from tests.conftest import NodeProcess, free_port
from tests.node.helpers import stub, submit, watch_until_end

pytestmark = pytest.mark.timeout(300)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=10, context=context) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode()


def samples(text: str) -> Samples:
    """Every sample of a scrape, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by_label(m: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in m.items() if n == name}


@pytest.fixture(scope="module")
def metered(tmp_path_factory, insurance_csv):
    """A node with --metrics-port, its scrape before any job, the job it ran, its scrape after."""
    port = free_port()
    node = NodeProcess(tmp_path_factory.mktemp("metrics") / "node", "--slots", "2",
                       "--metrics-port", str(port)).start()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        before = scrape(url)
        s = stub(node.address)
        job, _ = watch_until_end(s, submit(s, insurance_csv, "charges", max_trials=2, seed=5).job_id)
        assert job.state == pb.COMPLETED, job.message
        after = scrape(url)
        cluster = s.GetCluster(pb.GetClusterRequest(), timeout=10)
        yield {"before": before, "after": after, "job": job, "cluster": cluster, "url": url}
    finally:
        node.stop()


def test_a_scrape_says_what_the_node_says_of_itself(metered, insurance_csv):
    before, m = samples(metered["before"]), samples(metered["after"])
    job, cluster = metered["job"], metered["cluster"]
    (me,) = cluster.nodes
    # Read at each scrape: nothing of the job before it, all of it after.
    assert by_label(before, "nexus_trials", "state") == dict.fromkeys(
        ("complete", "pruned", "fail", "running", "waiting"), 0)
    assert by_label(m, "nexus_trials", "state") == {
        "complete": job.trials.complete, "pruned": job.trials.pruned, "fail": job.trials.fail,
        "running": job.trials.running, "waiting": job.trials.waiting}
    assert sum(by_label(m, "nexus_trials", "state").values()) == 2
    assert m[("nexus_trials_lost", ())] == job.trials.lost
    assert by_label(m, "nexus_jobs", "state")["completed"] == 1
    assert sum(by_label(m, "nexus_jobs", "state").values()) == 1

    assert m[("nexus_node_info", (("cluster", cluster.cluster_name), ("node_id", me.node_id),
                                  ("version", me.version)))] == 1
    assert m[("nexus_raft_term", ())] == cluster.term >= 1
    assert m[("nexus_raft_leader_changes_total", ())] >= 1   # it found its leader: itself
    assert m[("nexus_raft_commit_index", ())] >= m[("nexus_raft_applied_index", ())] > \
        before[("nexus_raft_applied_index", ())]
    assert by_label(m, "nexus_raft_members", "role") == {"voter": 1, "non_voter": 0}
    assert by_label(m, "nexus_slots", "state") == {"busy": me.slots_busy, "free": me.slots_total - me.slots_busy}
    assert me.slots_total == 2

    # The coordinator's own figures: nothing waits, and its own node's heartbeat is fresh.
    assert m[("nexus_coordinator", ())] == 1 and m[("nexus_queued_tasks", ())] == 0
    assert 0 <= by_label(m, "nexus_heartbeat_age_seconds", "node")[me.node_id] < 5.0   # --grace

    # Every write of the job (records and the study) was a proposal timed on its way.
    count = m[("nexus_raft_proposal_seconds_count", ())]
    assert count > before[("nexus_raft_proposal_seconds_count", ())] + 2
    assert m[("nexus_raft_proposal_seconds_bucket", (("le", "+Inf"),))] == count
    assert 0 < m[("nexus_raft_proposal_seconds_sum", ())]

    # The upload, the prepared arrays and the model are blobs in its store.
    assert m[("nexus_blobs", ())] >= 3 and m[("nexus_blob_bytes", ())] > insurance_csv.stat().st_size
    assert m[("nexus_blob_bound_bytes", ())] == 4096 << 20


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool (Debian's prometheus package) is not installed; .ci/run installs it")
def test_promtool_finds_nothing_to_say_of_a_scrape(metered):
    for text in (metered["before"], metered["after"]):
        out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                             timeout=60)
        # Exit 0 with no output: neither an error nor a lint warning (naming, units, help).
        assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_a_metrics_port_in_use_stops_the_node_before_it_joins_anything(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = NodeProcess(tmp_path / "node", "--metrics-port", str(port))
        with pytest.raises(RuntimeError, match="did not start"):
            node.start()
        assert node.proc is not None and node.proc.wait(30) == 1
    said = node.log.read_text()
    assert f"port {port} is in use" in said and "pass another --metrics-port" in said
    assert not (tmp_path / "node" / "raft.db").exists()   # refused before founding a cluster


def test_metrics_are_off_unless_asked_and_a_bad_port_is_refused(tmp_path, capsys):
    assert parse_args(["--data-dir", str(tmp_path)]).metrics_port is None
    assert parse_args(["--data-dir", str(tmp_path), "--metrics-port", "9464"]).metrics_port == 9464
    for flags in (["--metrics-port", "70000"], ["--metrics-port", "-1"], ["--port", "7070", "--metrics-port", "7070"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(["--data-dir", str(tmp_path), *flags])
        assert exc.value.code == 2
        assert "--metrics-port must be a port (0 to 65535) other than --port" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command makes the test CA")
def test_a_tls_node_serves_its_metrics_over_https_only(tmp_path):
    from tests.net.test_tls import make_ca, make_cert

    ca = make_ca(tmp_path, "ca")
    cert, key = make_cert(tmp_path, ca, "node", "IP:127.0.0.1,DNS:localhost")
    (tmp_path / "token").write_text("metrics-token\n")
    port = free_port()
    node = NodeProcess(tmp_path / "node", "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca),
                       "--token-file", str(tmp_path / "token"), "--metrics-port", str(port)).start()
    try:
        m = samples(scrape(f"https://127.0.0.1:{port}/metrics", ssl.create_default_context(cafile=str(ca))))
        assert m[("nexus_raft_term", ())] >= 1
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        node.stop()
