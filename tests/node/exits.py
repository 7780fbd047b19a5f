"""Running a real ``nexus-node`` that is expected to exit by itself (refused at start, failed)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port


@dataclass
class Exited:
    code: int
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        """The node's own one-line messages (not the log's)."""
        return [line for line in self.stderr.splitlines() if line.startswith("nexus-node:")]


def run_node(data_dir: Path, *extra: str, port: int = 0, timeout: float = 30.0) -> Exited:
    """Runs a node that should exit on its own within ``timeout`` seconds (a hang fails)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "nexus_node.node.main", "--port", str(port or free_port()),
         "--data-dir", str(data_dir), "--no-mdns", *extra],
        capture_output=True, text=True, env=env, timeout=timeout)
    if "listening on" in proc.stdout:
        raise AssertionError(f"the node served instead of exiting: {proc.stdout!r}")
    return Exited(proc.returncode, proc.stderr, time.monotonic() - started)


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (with SO_REUSEADDR, as gRPC binds: the
    closed connections' TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
