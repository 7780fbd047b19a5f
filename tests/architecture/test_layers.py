"""The layers import only downward (docs/architecture.md, *Layers*), checked on the source.

Every ``import`` and ``from ... import`` of every module is read with :mod:`ast` (imports inside
functions and under ``TYPE_CHECKING`` included: a lazy upward import is still an upward
dependency), resolved to the folder it names, and compared with the table below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Rank of each room: a module may import its own folder and folders of a lower rank only.
#: Rooms of one rank are independent of each other.
RANK = {
    "nexus_node": 0,            # errors.py, bounded_json.py, system.py, _generated/
    "nexus_node.net": 1,
    "nexus_node.pipeline": 1,
    "nexus_node.consensus": 2,
    "nexus_node.cluster": 3,
    "nexus_node.blobs": 3,
    "nexus_node.study": 4,
    "nexus_node.runner": 5,
    "nexus_node.llm": 5,
    "nexus_node.work": 6,
    "nexus_node.jobs": 7,
    "nexus_node.api": 8,
    "nexus_node.node": 9,
    "nexus_client": 10,
    "nexus_tui": 11,
}

#: What the client may use of the node package: its wire types, credentials and the Optuna
#: proxy, and (lazily, for ``nexus demo``) the embedded node. Nothing else of a node layer.
CLIENT_MAY_USE = ("nexus_node._generated", "nexus_node.errors", "nexus_node.bounded_json",
                  "nexus_node.net", "nexus_node.study.proxy", "nexus_node.study.constraints",
                  "nexus_node.node.embedded", "nexus_node.llm.settings")


def _modules() -> list[tuple[str, Path]]:
    found = []
    for pkg in ("nexus_node", "nexus_client", "nexus_tui"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "_generated" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append((name, path))
    return found


def room(module: str) -> str:
    """The folder a module belongs to: the longest entry of :data:`RANK` that prefixes it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in RANK:
            return candidate
    raise KeyError(module)


def imports_of(name: str, path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every Nexus module ``path`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from pkg import module`` depends on the module, not only on the package.
            for a in node.names:
                out.append((node.lineno, f"{target}.{a.name}"))
    return [(line, m) for line, m in out if m.split(".")[0] in ("nexus_node", "nexus_client", "nexus_tui")]


def violations() -> list[str]:
    bad = []
    for name, path in _modules():
        here = room(name)
        for line, target in imports_of(name, path):
            there = room(target)
            if there == here or target.startswith("nexus_node._generated"):
                continue
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if here == "nexus_client" and there.startswith("nexus_node"):
                if not target.startswith(CLIENT_MAY_USE) and room(target) != "nexus_node":
                    bad.append(f"{where}: the client may use only {', '.join(CLIENT_MAY_USE)}")
                continue
            if RANK[there] >= RANK[here]:
                bad.append(f"{where}: {here} (rank {RANK[here]}) may not import {there} (rank {RANK[there]})")
    return bad


def test_every_module_has_a_room():
    for name, _ in _modules():
        assert room(name) in RANK


def test_layers_import_only_downward():
    assert violations() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The walk is not vacuous: an upward import planted in a copy is reported."""
    planted = tmp_path / "nexus_node" / "consensus"
    planted.mkdir(parents=True)
    (planted / "bad.py").write_text("def f():\n    from nexus_node.jobs import manager\n")
    assert imports_of("nexus_node.consensus.bad", planted / "bad.py") == [(2, "nexus_node.jobs.manager")]
    monkeypatch.setattr(__import__(__name__, fromlist=["_modules"]), "_modules",
                        lambda: [("nexus_node.consensus.bad", planted / "bad.py")])
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    assert len(violations()) == 1 and "may not import nexus_node.jobs" in violations()[0]


@pytest.mark.parametrize("module", ["nexus_node.consensus.raft", "nexus_node.work.scheduler"])
def test_pure_rooms_import_no_io(module):
    """The pure core and the scheduler read no socket, clock or disk (STYLE.md §1, §5)."""
    path = ROOT / (module.replace(".", "/") + ("/__init__.py" if module.endswith("raft") else ".py"))
    files = sorted(path.parent.glob("*.py")) if module.endswith("raft") else [path]
    banned = {"asyncio", "grpc", "socket", "aiosqlite", "sqlite3", "threading", "time"}
    for f in files:
        tree = ast.parse(f.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not names & banned, f"{f.name} imports {sorted(names & banned)}"


def test_scripts_import_names_that_exist():
    """The benchmarks import the package lazily, inside functions, so a moved name breaks them
    only when they run: check every ``from nexus_... import name`` in scripts/ resolves."""
    import importlib

    missing = []
    for path in sorted((ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("nexus_node", "nexus_client")):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{path.name}:{node.lineno} {node.module}.{alias.name}")
    assert missing == []
