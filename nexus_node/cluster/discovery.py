"""Finding peers: mDNS/DNS-SD with python-zeroconf (RFC 6762/6763) and ``--seeds``.

A node registers ``<node id>._nexus._tcp.local.`` with its address, port and a TXT record
(node id, cluster name, peer protocol version, port), and browses the same type. Every
service heard is resolved, read (:func:`~nexus_node.cluster.peers.read_advert`) and admitted or
refused (:func:`~nexus_node.cluster.peers.refusal`); admitted nodes and the ``--seeds`` enter
the :class:`~nexus_node.cluster.peers.PeerDirectory`. Membership is the mesh's business, not
this module's: the directory lists candidates, and the cluster token is checked only when a
peer is first called (``PeerService.Hello``), since mDNS carries no secrets.

Everything runs on the event loop (``zeroconf.asyncio``); zeroconf's own thread only moves
packets. Registration (RFC 6762 §8: probing, then announcing, about 1.5 s) runs in the
background so that a node serves at once; closing sends goodbyes (§10.1) so that peers drop
this node without waiting for its records to expire.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from nexus_node.cluster.peers import (
    SERVICE_TYPE,
    Peer,
    PeerDirectory,
    join_host_port,
    read_advert,
    refusal,
    txt_record,
)
from nexus_node.consensus.transport import PROTOCOL_VERSION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiscoverySettings:
    """How one node finds its peers.

    Attributes:
        node_id: This node's id.
        cluster: This node's cluster name; only nodes with the same name are admitted.
        port: The gRPC port peers should call.
        advertise_host: The IP address peers should call, or None to neither register nor
            browse (see :func:`~nexus_node.cluster.peers.advertise_host`).
        no_advert_reason: Why ``advertise_host`` is None, for the log.
        seeds: ``host:port`` of nodes to list without multicast.
        mdns: False for ``--no-mdns``.
        resolve_timeout_ms: How long resolving one service may take.
        protocol_version: The peer protocol spoken (other versions are refused).
    """

    node_id: str
    cluster: str
    port: int
    advertise_host: str | None
    no_advert_reason: str = ""
    seeds: Sequence[str] = field(default_factory=tuple)
    mdns: bool = True
    resolve_timeout_ms: int = 3000
    protocol_version: int = PROTOCOL_VERSION

    @property
    def mdns_off_reason(self) -> str | None:
        """Why this node does not use mDNS, or None if it does."""
        if not self.mdns:
            return "--no-mdns"
        if self.advertise_host is None:
            return self.no_advert_reason or "no address to announce"
        return None


class Discovery:
    """Keeps a :class:`PeerDirectory` from mDNS and seeds for one node.

    Args:
        settings: Identity, address and sources.
        on_change: Called (on the event loop) whenever the directory changes, e.g. to wake
            ``WatchCluster`` streams.
        clock: Unix time, for the directory's ``last_seen``.
    """

    def __init__(self, settings: DiscoverySettings, on_change: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.directory = PeerDirectory()
        #: Nodes heard but not admitted: node id (or service name if unreadable) → reason.
        self.refused: dict[str, str] = {}
        self.registered = False
        self._on_change = on_change
        self._clock = clock
        self._changed = asyncio.Event()
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._register_task: asyncio.Task[None] | None = None
        self._resolving: set[asyncio.Task[None]] = set()
        self._names: dict[str, str] = {}   # service name → admitted node id

    @property
    def mdns_active(self) -> bool:
        """True once zeroconf's sockets are open (registering and browsing)."""
        return self._zc is not None

    async def start(self) -> None:
        """Lists the seeds, then starts registering and browsing unless mDNS is off.

        A host where the multicast sockets cannot be opened (no interface, no permission)
        keeps its seeds and logs why mDNS is off; it never fails the node.
        """
        s = self.settings
        own = join_host_port(s.advertise_host, s.port) if s.advertise_host else None
        if self.directory.add_seeds([a for a in s.seeds if a != own], self._clock()):
            self._notify()
        reason = s.mdns_off_reason
        if reason is not None:
            log.info("mDNS discovery off: %s; %d seed(s)", reason, len(s.seeds))
            return
        assert s.advertise_host is not None
        try:
            # Only the interface that owns the advertised address: multicast announcements
            # go out where peers can reach that address, and a loopback address is never
            # announced to the LAN.
            self._zc = AsyncZeroconf(interfaces=[s.advertise_host])
        except (OSError, ValueError) as exc:
            log.warning("mDNS discovery off: cannot open multicast sockets on %s: %s",
                        s.advertise_host, exc)
            return
        self._info = AsyncServiceInfo(
            SERVICE_TYPE, f"{s.node_id}.{SERVICE_TYPE}", port=s.port,
            properties=txt_record(s.node_id, s.cluster, s.protocol_version, s.port),
            server=f"{s.node_id}.local.", parsed_addresses=[s.advertise_host],
        )
        self._register_task = asyncio.create_task(self._register(), name="mdns-register")
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_service])
        log.info("mDNS: announcing %s at %s in cluster %r and browsing %s", s.node_id, own,
                 s.cluster, SERVICE_TYPE)

    async def _register(self) -> None:
        assert self._zc is not None and self._info is not None
        try:
            # allow_name_change: two nodes with one id (a copied data dir) must not stop
            # each other from starting; the TXT record still says which node each is.
            announced = await self._zc.async_register_service(self._info, allow_name_change=True)
            await announced
        except Exception as exc:  # noqa: BLE001 - zeroconf raises several unrelated types
            log.warning("mDNS registration of %s failed: %s", self.settings.node_id, exc)
            return
        self.registered = True
        self._notify()

    def _on_service(self, zeroconf: Zeroconf, service_type: str, name: str,
                    state_change: ServiceStateChange) -> None:
        # Called by zeroconf on the event loop; it must not block, so resolving is a task.
        if state_change is ServiceStateChange.Removed:
            node_id = self._names.pop(name, None)
            if node_id is not None and self.directory.lost(node_id):
                log.info("peer %s left (mDNS goodbye or expiry)", node_id)
                self._notify()
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name), name=f"mdns-resolve-{name}")
        self._resolving.add(task)
        task.add_done_callback(self._resolving.discard)

    async def _resolve(self, name: str) -> None:
        assert self._zc is not None
        s = self.settings
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._zc.zeroconf, s.resolve_timeout_ms):
            log.debug("mDNS: %s did not resolve within %d ms", name, s.resolve_timeout_ms)
            return
        try:
            advert = read_advert(info.properties, info.parsed_addresses(), info.port)
        except ValueError as exc:
            self._refuse(name, f"unreadable advert: {exc}")
            return
        reason = refusal(advert, node_id=s.node_id, cluster=s.cluster,
                         protocol_version=s.protocol_version)
        if reason is not None:
            self._refuse(advert.node_id, reason)
            return
        self._names[name] = advert.node_id
        if self.directory.found(advert.node_id, advert.address, "mdns", self._clock()):
            log.info("discovered peer %s at %s (mDNS)", advert.node_id, advert.address)
            self._notify()

    def _refuse(self, key: str, reason: str) -> None:
        if self.refused.get(key) == reason:
            return
        self.refused[key] = reason
        if key != self.settings.node_id:
            log.info("not a peer: %s (%s)", key, reason)
        self._notify()

    def told(self, members: Sequence[tuple[str, str]]) -> None:
        """Lists the members another node named in a Hello (see :meth:`PeerDirectory.told`)."""
        now = self._clock()
        changed = [self.directory.told(n, a, now) for n, a in members if a and n != self.settings.node_id]
        if any(changed):
            self._notify()

    def peers(self) -> list[Peer]:
        """The directory's entries (see :meth:`PeerDirectory.peers`)."""
        return self.directory.peers()

    def _notify(self) -> None:
        # Wake every waiter, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
        if self._on_change is not None:
            self._on_change()

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Waits until ``condition()`` holds, re-checking it after each change.

        Returns:
            Whether it held before ``timeout`` seconds passed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                return condition()
        return True

    async def close(self) -> None:
        """Stops browsing and unregisters (goodbye packets, RFC 6762 §10.1)."""
        if self._register_task is not None:
            self._register_task.cancel()
            await asyncio.gather(self._register_task, return_exceptions=True)
        for task in list(self._resolving):
            task.cancel()
        await asyncio.gather(*self._resolving, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._zc is not None:
            await self._zc.async_close()   # unregisters every service it registered
            self._zc = None
        self.registered = False


def primary_address() -> str | None:
    """The address of the interface holding the default route, or None without one.

    Connecting a UDP socket sends nothing; it only makes the kernel pick the source address
    it would use, which is the address peers on the LAN reach this host by.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))   # TEST-NET-1 (RFC 5737): routed, never answered
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_unspecified else address
