"""Hosts as network namespaces joined by a bridge (needs root), for the multi-host tests.

Each host is a namespace with one veth (``eth0``) into a bridge that lives in a namespace of
its own, so nothing of the machine's own network changes, except, when asked, one veth from
the root namespace into the bridge, so that the test process itself reaches the hosts. The
addresses (10.231.N.0/24) exist only on these links. Cutting a host off is setting its port on
the bridge down: its packets are dropped silently, like an unplugged cable (no reset reaches
either side), and setting it up again heals the link.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
from typing import Iterator

import pytest


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclasses.dataclass(frozen=True)
class Host:
    ns: str        # the namespace (``ip netns exec NS ...`` runs on this host)
    address: str   # its address on the bridge
    port: str      # its veth's end on the bridge (in the bridge's namespace)


@dataclasses.dataclass(frozen=True)
class Bridge:
    ns: str
    hosts: list[Host]

    def link(self, host: Host, up: bool) -> None:
        """Plugs (``up``) or unplugs ``host``'s cable at the bridge."""
        ip("-n", self.ns, "link", "set", host.port, "up" if up else "down")


@contextlib.contextmanager
def bridged_hosts(n: int = 3, reach_from_root: bool = False) -> Iterator[Bridge]:
    """``n`` namespaces on one bridge, removed afterwards. Skips the test (with the reason)
    without root or where ``ip netns`` does not work. ``reach_from_root``: the root namespace
    gets an address on the bridge too (.254), so this process can connect to the hosts."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs this as root)")
    tag = f"nx{os.getpid() % 100000}"
    # Two xdist workers (gw0, gw1) may build hosts at once: distinct parities, distinct subnets.
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    subnet = f"10.231.{(os.getpid() % 120) * 2 + worker % 2}"
    bridge = Bridge(f"{tag}-br", [Host(f"{tag}-h{i}", f"{subnet}.{i + 1}", f"p{i}") for i in range(n)])
    root_link = f"{tag}-r"
    made: list[str] = []
    linked = False
    try:
        try:
            ip("netns", "add", bridge.ns)
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"`ip netns` does not work here: {getattr(exc, 'stderr', exc)}")
        made.append(bridge.ns)
        ip("-n", bridge.ns, "link", "add", "br0", "type", "bridge")
        ip("-n", bridge.ns, "link", "set", "br0", "up")
        for h in bridge.hosts:
            ip("netns", "add", h.ns)
            made.append(h.ns)
            ip("link", "add", "eth0", "netns", h.ns, "type", "veth", "peer", "name", h.port, "netns", bridge.ns)
            ip("-n", bridge.ns, "link", "set", h.port, "master", "br0", "up")
            ip("-n", h.ns, "addr", "add", f"{h.address}/24", "dev", "eth0")
            ip("-n", h.ns, "link", "set", "eth0", "up")
            ip("-n", h.ns, "link", "set", "lo", "up")
        if reach_from_root:
            ip("link", "add", root_link, "type", "veth", "peer", "name", "proot", "netns", bridge.ns)
            linked = True
            ip("-n", bridge.ns, "link", "set", "proot", "master", "br0", "up")
            ip("addr", "add", f"{subnet}.254/24", "dev", root_link)
            ip("link", "set", root_link, "up")
        yield bridge
    finally:
        if linked:
            subprocess.run(["ip", "link", "del", root_link], capture_output=True)
        for ns in reversed(made):   # deleting a namespace deletes its veth ends too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
