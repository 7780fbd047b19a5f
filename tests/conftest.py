"""Shared fixtures: real datasets from ../shared/datasets and real nodes on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from grpc.experimental.aio import init_grpc_aio

# gRPC's asyncio layer shuts its completion queue down (joining its poller thread) when the last
# aio object is garbage-collected; with a new event loop per test that can happen inside a later
# test's GC and deadlock the whole run (seen once: a TUI test hung in gc -> cygrpc -> join;
# grpc/grpc#22365). Initialising it once from the main thread keeps one reference for the
# session, so that shutdown never runs mid-suite.
init_grpc_aio()

# An asyncio task that dies with an unhandled error fails the test (tests/asyncio_errors.py).
pytest_plugins = ["tests.asyncio_errors", "tests.blocking"]

ROOT = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("NEXUS_DATASETS", ROOT.parent / "shared" / "datasets"))


def dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.is_file():
        pytest.fail(f"dataset {path} is missing: ../shared/datasets must sit beside the repo")
    return path


@pytest.fixture(scope="session")
def insurance_csv() -> Path:
    return dataset("insurance.csv")


class NodeProcess:
    """A real ``nexus-node`` process on a loopback port, started and stopped by a test.

    ``host`` and ``netns``: it listens on ``host`` inside that network namespace instead (one
    of :mod:`tests.netns`'s hosts); ``ip netns exec`` execs, so its pid is the node's."""

    def __init__(self, data_dir: Path, *extra: str, port: int = 0, env: dict[str, str] | None = None,
                 host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.data_dir = data_dir
        self.extra = list(extra)
        self.host, self.netns = host, netns
        # A developer's own Gemini key must not reach test nodes: only what a test passes.
        self.env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
        self.env.update(env or {})
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log = data_dir.parent / f"{data_dir.name}-node.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> "NodeProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logf = open(self.log, "a")
        self.proc = subprocess.Popen(
            [*(["ip", "netns", "exec", self.netns] if self.netns else []),
             sys.executable, "-m", "nexus_node.node.main", "--host", self.host,
             "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra],
            stdout=subprocess.PIPE, stderr=logf, text=True, env=self.env,
        )
        assert self.proc.stdout is not None
        # The node prints one line once it serves; reading it is the synchronisation.
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.wait(timeout)
            raise RuntimeError(f"node did not start: {line!r}; log:\n{self.log.read_text()[-3000:]}")
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if the node is still there after ``timeout`` seconds.

        Returns:
            The exit status (negative: the signal that ended it, -9 if it had to be killed),
            or None if it was not running.
        """
        if not self.proc:
            return None
        if self.proc.poll() is not None:
            if self.proc.returncode not in (0, -9):   # it ended by itself, not by a test's kill
                print(f"node {self.data_dir} had already exited with status {self.proc.returncode}; its log "
                      f"ends:\n{self.log.read_text(errors='replace')[-4000:]}")
            return None
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if code != 0:
            # Captured, so a test that expected a clean stop shows why it was not.
            print(f"node {self.data_dir} stopped with status {code}; its log ends:\n"
                  f"{self.log.read_text(errors='replace')[-4000:]}")
        return code

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator:
    nodes: list[NodeProcess] = []

    def make(name: str = "node", *extra: str, port: int = 0, env: dict[str, str] | None = None,
             host: str = "127.0.0.1", netns: str | None = None) -> NodeProcess:
        n = NodeProcess(tmp_path / name, *extra, port=port, env=env, host=host, netns=netns)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.stop()


@pytest.fixture(scope="session")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for the tests that only submit and read (faster than a node per test)."""
    node = NodeProcess(tmp_path_factory.mktemp("shared") / "node", "--slots", "2").start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def node_address(shared_node: NodeProcess) -> str:
    return shared_node.address
