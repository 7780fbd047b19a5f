"""``pip install nexus-node`` is the client and the CLI: grpcio and protobuf, nothing a node needs.

Two checks: the package's declared dependencies, and a real client process that cannot import
any node library (an import hook refuses them) talking to a real node.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: What a node, the dashboard or the suite needs and a client must not.
NODE_ONLY = ("torch", "optuna", "pandas", "numpy", "sklearn", "zeroconf", "aiosqlite", "textual",
             "textual_plotext", "google.genai", "grpc_health", "grpc_reflection", "grpc_tools", "scipy", "pyarrow",
             "prometheus_client")

BLOCKER = f"""
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in {NODE_ONLY!r}):
            raise ImportError(f"a client install has no {{name}}")
        return None
sys.meta_path.insert(0, Refuse())
"""


def _name(requirement: str) -> str:
    for sep in "<>=!~[; ":
        requirement = requirement.split(sep)[0]
    return requirement.lower()


def test_the_base_install_is_grpc_and_protobuf():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(_name(r) for r in project["dependencies"]) == ["grpcio", "protobuf"]
    extras = project["optional-dependencies"]
    assert "torch" in {_name(r) for r in extras["node"]}
    assert "textual" in {_name(r) for r in extras["tui"]}


def _client(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_the_blocker_refuses_a_node_library():
    """The hook is real: the node's own entry point cannot even be imported behind it."""
    out = _client("import nexus_node.node.main")
    assert out.returncode != 0 and "a client install has no" in out.stderr


def test_the_cli_works_against_a_node_without_node_libraries(shared_node):
    out = _client(
        "from nexus_client.cli import main\n"
        f"sys.exit(main(['--connect', {shared_node.address!r}, 'cluster', '--json']))\n")
    assert out.returncode == 0, out.stderr[-2000:]
    cluster = json.loads(out.stdout)
    assert [n["node_id"] for n in cluster["nodes"]] == [cluster["coordinator_id"]]
    out = _client("import nexus_client, nexus_client.client, nexus_client.progress, nexus_client.jobview\n"
                  "print(sorted(m for m in sys.modules if any(m == n or m.startswith(n + '.') for n in "
                  f"{NODE_ONLY!r})))")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
