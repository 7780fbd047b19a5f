"""Optional TLS: real node processes on loopback with a throwaway CA made by the openssl CLI.

A node with a certificate serves TLS only: clients with the CA get through (the token is still
checked on every call), plaintext clients and clients trusting another CA do not. Its runners
reach its StorageService over TLS although its certificate does not name 127.0.0.1. Two TLS
nodes form a cluster by --seeds and run a job; a node that cannot check their certificates
(no CA) or speaks plaintext never joins.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import optuna
import pytest

from nexus_client import cli
from nexus_client.client import NexusClient
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.net.tls import ENV_CA, ClientTls, TlsError, client_tls, load_node_tls
from tests.clusters import cluster_until, roles
from tests.conftest import free_port
from tests.node.helpers import FAST, rpc_error, stub, submit, watch_until_end

pytestmark = [
    pytest.mark.timeout(400),
    pytest.mark.skipif(shutil.which("openssl") is None,
                       reason="the openssl command makes the test CA and certificates; it is not installed"),
]

TOKEN = "tls-cluster-token"


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> Path:
    """A self-signed CA: ``name.pem`` and ``name.key`` in ``d``."""
    _openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return d / f"{name}.pem"


def make_cert(d: Path, ca: Path, name: str, sans: str) -> tuple[Path, Path]:
    """A server certificate for ``sans`` (``subjectAltName`` syntax) signed by ``ca``."""
    (d / f"{name}.ext").write_text(
        f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n")
    _openssl(d, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", ca.name, "-CAkey", ca.with_suffix(".key").name,
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return d / f"{name}.pem", d / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "cluster-ca")
    rogue = make_ca(d, "rogue-ca")
    # Names what clients (localhost) and peers (the advertised 127.0.0.2) dial, not 127.0.0.1:
    # the address runners dial (see nexus_node/net/tls.py).
    local_cert, local_key = make_cert(d, ca, "local", "IP:127.0.0.2,DNS:localhost")
    node_cert, node_key = make_cert(d, ca, "node", "IP:127.0.0.1,DNS:localhost")
    (d / "token").write_text(TOKEN + "\n")
    return {"ca": ca, "rogue": rogue, "local_cert": local_cert, "local_key": local_key,
            "node_cert": node_cert, "node_key": node_key, "token": d / "token", "dir": d}


def test_tls_settings_are_checked_before_the_node_starts(pki, tmp_path):
    ca, cert, key = str(pki["ca"]), str(pki["node_cert"]), str(pki["node_key"])
    assert load_node_tls(None, None, None) is None
    tls = load_node_tls(cert, key, ca)
    assert tls is not None and tls.server_name == "localhost" and tls.ca_file == ca
    assert load_node_tls(str(pki["local_cert"]), str(pki["local_key"]), None).server_name == "localhost"
    bad = tmp_path / "not-pem"
    bad.write_text("hello\n")
    cases = [
        ((cert, None, ca), "--tls-cert needs --tls-key"),
        ((None, key, ca), "--tls-key needs --tls-cert"),
        ((None, None, ca), "--tls-ca needs --tls-cert and --tls-key"),
        ((str(tmp_path / "missing.pem"), key, ca), "cannot read it"),
        ((cert, str(pki["dir"] / "cluster-ca.key"), ca), "not a PEM certificate and its private key"),
        ((str(bad), key, None), "not a PEM certificate"),
        ((cert, key, str(bad)), "no PEM certificate in it"),
    ]
    for args, message in cases:
        with pytest.raises(TlsError, match=message):
            load_node_tls(*args)
    with pytest.raises(TlsError, match="NEXUS_TLS_CA"):
        client_tls(None, {ENV_CA: str(bad)})
    assert client_tls(None, {ENV_CA: ca}) == ClientTls(ca) and client_tls("", {ENV_CA: ca}) is None

    # nexus-node says so and exits before doing anything.
    proc = subprocess.run([sys.executable, "-m", "nexus_node.node.main", "--tls-cert", cert,
                           "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--tls-cert needs --tls-key" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_a_tls_node_serves_clients_with_the_ca_and_refuses_plaintext(pki, node_factory, insurance_csv,
                                                                     capsys, monkeypatch):
    monkeypatch.delenv(ENV_CA, raising=False)
    # On every interface (still only talked to over loopback), advertised as 127.0.0.2: its
    # runners dial 127.0.0.1, which its certificate does not name.
    node = node_factory("tls", "--host", "0.0.0.0", "--advertise-host", "127.0.0.2", "--no-mdns", "--slots", "1",
                        "--token-file", str(pki["token"]), "--tls-cert", str(pki["local_cert"]),
                        "--tls-key", str(pki["local_key"]), "--tls-ca", str(pki["ca"])).start()
    address = f"localhost:{node.port}"   # a name in the certificate
    ca = str(pki["ca"])
    common = ["--connect", address, "--token-file", str(pki["token"])]

    # The CLI with the CA, given as --tls-ca or in NEXUS_TLS_CA.
    assert cli.main([*common, "--tls-ca", ca, "cluster", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [n["address"] for n in shown["nodes"]] == [f"127.0.0.2:{node.port}"]
    monkeypatch.setenv(ENV_CA, ca)
    assert cli.main([*common, "jobs", "--json"]) == 0
    capsys.readouterr()
    monkeypatch.delenv(ENV_CA)

    # Plaintext, another CA, or the CA without the token: refused.
    assert cli.main([*common, "cluster"]) == cli.EXIT_RPC
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and f"the node at {address} speaks TLS: pass --tls-ca" in err
    assert len(err.strip().splitlines()) == 1, err   # one line of its own, no gRPC core log
    assert rpc_error(stub(address, TOKEN).ListJobs, pb.ListJobsRequest(), timeout=10).code() == \
        grpc.StatusCode.UNAVAILABLE
    assert rpc_error(stub(address, TOKEN, ClientTls(str(pki["rogue"]))).ListJobs, pb.ListJobsRequest(),
                     timeout=10).code() == grpc.StatusCode.UNAVAILABLE
    assert rpc_error(stub(address, None, ClientTls(ca)).ListJobs, pb.ListJobsRequest(), timeout=10).code() == \
        grpc.StatusCode.UNAUTHENTICATED
    assert cli.main(["--connect", address, "--tls-ca", str(pki["dir"] / "nope.pem"), "jobs"]) == cli.EXIT_USAGE
    assert "cannot read it" in capsys.readouterr().err

    # A job completes: the runners' trials reach the node's storage on 127.0.0.1 over TLS,
    # checked against the CA under a name the certificate carries.
    with NexusClient(address, token=TOKEN, tls_ca=ca) as client:
        job = client.submit(insurance_csv, "charges", max_trials=2, seed=1, constraints=json.loads(FAST))
        final = client.wait(job.job_id)
        assert final.state == pb.COMPLETED, final.message
        # Optuna code reads the study through the client's TLS settings too.
        study = optuna.load_study(study_name=final.study_name, storage=client.optuna_storage())
        assert study.best_value == final.best_value


def test_two_tls_nodes_form_a_cluster_and_a_peer_without_the_ca_stays_out(pki, node_factory, insurance_csv):
    ports = [free_port() for _ in range(2)]
    seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
    common = ("--slots", "1", "--seeds", seeds, "--no-mdns", "--token-file", str(pki["token"]))
    cert = ("--tls-cert", str(pki["node_cert"]), "--tls-key", str(pki["node_key"]))
    tls = ClientTls(str(pki["ca"]))
    a, b = (node_factory(name, *common, *cert, "--tls-ca", str(pki["ca"]), port=p).start()
            for name, p in zip("ab", ports))
    # (Two nodes: a coordinator and a non-voter; voters are an odd number.)
    view = cluster_until(a.address, lambda v: len(v.nodes) == 2 and v.coordinator_id != "", token=TOKEN, tls=tls)

    # With the token and a certificate from the cluster's CA but no CA to check theirs (nor the
    # system's roots accept them), or in plaintext: neither node gets in; each founds its own.
    blind = node_factory("blind", *common, *cert).start()
    plain = node_factory("plain", *common).start()
    assert roles(stub(blind.address, TOKEN, tls).GetCluster(pb.GetClusterRequest(), timeout=10)) == \
        {blind.address: pb.COORDINATOR}
    assert list(roles(stub(plain.address, TOKEN).GetCluster(pb.GetClusterRequest(), timeout=10))) == [plain.address]
    for n in (a, b):
        assert roles(stub(n.address, TOKEN, tls).GetCluster(pb.GetClusterRequest(), timeout=10)) == roles(view)

    # A job submitted to the follower runs on the coordinator: the dataset travels between
    # them over TLS (blob fetch), the trials reach the coordinator's storage over TLS.
    lead = a if roles(view)[a.address] == pb.COORDINATOR else b
    other = b if lead is a else a
    job_id = submit(stub(other.address, TOKEN, tls), insurance_csv, "charges", max_trials=2, seed=2).job_id
    job, events = watch_until_end(stub(lead.address, TOKEN, tls), job_id)
    assert job.state == pb.COMPLETED, job.message
    assert sum(ev.kind == pb.TRIAL_FINISHED for ev in events) == 2
