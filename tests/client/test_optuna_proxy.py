"""``nexus optuna-proxy``: plain Optuna, where Nexus cannot even be imported, works on a node with
a token and TLS through a real proxy process (itself a client with no node library).

The Optuna side runs in an interpreter started with ``-I -S``: no site-packages processing, so
the editable install's import hook never loads, and no working directory on ``sys.path``. It
gets only the folder where Optuna, grpc and optuna-dashboard are installed, proves that
``nexus_node`` and ``nexus_client`` cannot be found, then uses Optuna's own
``GrpcStorageProxy``, first on the node directly (refused), then on the proxy. That is what a
user with ``pip install optuna grpcio`` and no Nexus has.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from nexus_client import cli
from nexus_client.client import NexusClient
from tests.architecture.test_light_install import BLOCKER
from tests.conftest import ROOT
from tests.net.test_tls import make_ca, make_cert

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("openssl") is None,
                       reason="the openssl command makes the test CA and certificate; it is not installed"),
]

TOKEN = "optuna-proxy-token"
#: Where Optuna, grpc and optuna-dashboard are installed (and, inert without its .pth, Nexus's
#: editable import hook).
SITE = str(Path(optuna.__file__).resolve().parents[1])

PLAIN_OPTUNA = """
import importlib.util, json, sys, wsgiref.util
sys.path.append({site!r})
assert importlib.util.find_spec("nexus_node") is None and importlib.util.find_spec("nexus_client") is None
import grpc, optuna, optuna_dashboard
from optuna.storages import GrpcStorageProxy
optuna.logging.set_verbosity(optuna.logging.WARNING)

direct = GrpcStorageProxy(host="127.0.0.1", port={node_port})
try:
    direct.get_all_studies()
    refused = None
except grpc.RpcError as e:
    refused = e.code().name

storage = GrpcStorageProxy(host="127.0.0.1", port={proxy_port})
study = optuna.create_study(study_name="plain", storage=storage)
study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.25) ** 2, n_trials=3)

app = optuna_dashboard.wsgi(storage)
def get(path):
    environ = {{}}
    wsgiref.util.setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:300])
    return json.loads(body)

listed = get("/api/studies")["study_summaries"]
mine = next(s for s in listed if s["study_name"] == "plain")
detail = get("/api/studies/%d" % mine["study_id"])
files = [getattr(m, "__file__", None) or "" for m in list(sys.modules.values())]
print(json.dumps({{
    "refused_directly": refused,
    "values": [t.value for t in optuna.load_study(study_name="plain", storage=storage).trials],
    "dashboard_studies": [s["study_name"] for s in listed],
    "dashboard_trials": len(detail["trials"]),
    "nexus_modules": sorted(m for m in sys.modules if m.startswith(("nexus_node", "nexus_client"))),
    "nexus_files": [f for f in files if f.startswith({packages!r})],
}}))
"""


def user_env() -> dict[str, str]:
    """The environment of a user's shell that holds no Nexus settings: only flags count."""
    env = {k: v for k, v in os.environ.items() if k not in ("NEXUS_TOKEN", "NEXUS_TLS_CA", "NEXUS_ADDR")}
    env["NEXUS_DATA_DIR"] = os.devnull
    return env


def _proxy(*args: str) -> subprocess.Popen[str]:
    """``nexus ARGS optuna-proxy --listen 127.0.0.1:0`` in a process where no node library (Optuna
    included) can be imported: the proxy needs only the base install."""
    argv = [*args, "optuna-proxy", "--listen", "127.0.0.1:0"]
    code = BLOCKER + f"from nexus_client.cli import main\nsys.exit(main({argv!r}))\n"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=user_env(), cwd=ROOT)


def _refusal(*args: str) -> subprocess.CompletedProcess[str]:
    proc = _proxy(*args)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def tls_node(node_factory, tmp_path):
    ca = make_ca(tmp_path, "ca")
    cert, key = make_cert(tmp_path, ca, "node", "IP:127.0.0.1,DNS:localhost")
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    node = node_factory("tls", "--no-mdns", "--slots", "1", "--token-file", str(token), "--tls-cert", str(cert),
                        "--tls-key", str(key), "--tls-ca", str(ca)).start()
    return node, ca, token


def test_plain_optuna_without_nexus_reads_and_writes_a_tokened_tls_node_through_the_proxy(tls_node, tmp_path):
    node, ca, token = tls_node
    address = f"localhost:{node.port}"
    proxy = _proxy("--connect", address, "--token-file", str(token), "--tls-ca", str(ca))
    try:
        assert proxy.stdout is not None
        # The proxy prints its address once it serves; reading it is the synchronisation.
        listen = proxy.stdout.readline().strip()
        assert listen.startswith("127.0.0.1:"), proxy.communicate(timeout=30)[1] if not listen else listen
        code = PLAIN_OPTUNA.format(site=SITE, node_port=node.port, proxy_port=listen.rpartition(":")[2],
                                   packages=tuple(str(ROOT / p) for p in ("nexus_node", "nexus_client", "nexus_tui")))
        out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path, env=user_env())
        assert out.returncode == 0, out.stderr[-3000:]
        seen = json.loads(out.stdout)
    finally:
        proxy.terminate()
        proxy.wait(30)

    assert seen["nexus_modules"] == [] and seen["nexus_files"] == []
    # Optuna's own proxy cannot reach the node (no TLS, no token); through ours it can.
    assert seen["refused_directly"] == "UNAVAILABLE"
    assert len(seen["values"]) == 3 and all(v is not None for v in seen["values"])
    assert "plain" in seen["dashboard_studies"] and seen["dashboard_trials"] == 3

    # The trials are the node's: Nexus's own client reads the same values there.
    with NexusClient(address, token=TOKEN, tls_ca=str(ca)) as client:
        study = optuna.load_study(study_name="plain", storage=client.optuna_storage())
        assert [t.value for t in study.trials] == seen["values"]


def test_the_proxy_says_why_a_node_refuses_it_before_serving(tls_node, tmp_path):
    node, ca, token = tls_node
    address = f"localhost:{node.port}"
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")

    bad_token = _refusal("--connect", address, "--token-file", str(wrong), "--tls-ca", str(ca))
    assert bad_token.returncode == cli.EXIT_USAGE and bad_token.stdout == ""
    assert "UNAUTHENTICATED" in bad_token.stderr

    plaintext = _refusal("--connect", address, "--token-file", str(token))
    assert plaintext.returncode == cli.EXIT_RPC and plaintext.stdout == ""
    assert f"the node at {address} speaks TLS: pass --tls-ca" in plaintext.stderr


@pytest.mark.parametrize("listen", ["0.0.0.0:13000", "192.0.2.7:13000", "[::]:13000", "localhost", "127.0.0.1:x"])
def test_the_proxy_listens_on_loopback_only(listen, capsys, clean_env):
    # No node is needed: the address is refused before anything is dialled.
    assert cli.main(["--connect", "127.0.0.1:1", "optuna-proxy", "--listen", listen]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"error: --listen {listen!r}")
    assert ("loopback only" in err) if ":13000" in listen else ("HOST:PORT" in err)
