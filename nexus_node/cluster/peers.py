"""Which discovered nodes are peers, and the directory of the ones that are (pure: no sockets).

Discovery (:mod:`nexus_node.cluster.discovery`) turns mDNS answers and ``--seeds`` into calls on
this module: :func:`read_advert` reads a node's TXT record (RFC 6763 §6), :func:`refusal`
decides whether it may be a peer, and :class:`PeerDirectory` keeps the admitted ones with
where they came from and when they were last seen. Time is a parameter (``now``), read by
the caller, so tests drive the directory with made-up clocks.

Admission here is only the first gate. mDNS is unauthenticated (anyone on the link can
announce anything), so a TXT record never carries a secret; the peer secret is checked
by the auth interceptor on the first RPC to the peer (``PeerService.Hello``), which also
re-checks cluster name and protocol version.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Sequence

#: The DNS-SD service type (RFC 6763 §7: ``_<service>._tcp``) every node registers.
SERVICE_TYPE = "_nexus._tcp.local."

# TXT keys. RFC 6763 §6.4 asks for keys of at most nine characters; §6.6 for few of them.
KEY_NODE = "node"
KEY_CLUSTER = "cluster"
KEY_PROTOCOL = "proto"
KEY_PORT = "port"

# "peer": named by another node as a member of its cluster, in a Hello (second hand).
Source = Literal["mdns", "seed", "peer"]


@dataclass(frozen=True)
class Advert:
    """What one node announces about itself by mDNS.

    Attributes:
        node_id: The node's stable id (kept in its data dir).
        cluster: The cluster name it belongs to (``--cluster``).
        protocol_version: Its peer protocol version (``transport.PROTOCOL_VERSION``).
        address: ``host:port`` where it serves gRPC (``[v6]:port`` for IPv6).
    """

    node_id: str
    cluster: str
    protocol_version: int
    address: str


def txt_record(node_id: str, cluster: str, protocol_version: int, port: int) -> dict[str, str]:
    """The TXT record a node registers (RFC 6763 §6.3: ``key=value`` strings).

    The port duplicates the SRV record's on purpose: a browser that only reads TXT (a
    dashboard, ``avahi-browse -r``) sees the whole identity in one place.
    """
    return {KEY_NODE: node_id, KEY_CLUSTER: cluster, KEY_PROTOCOL: str(protocol_version),
            KEY_PORT: str(port)}


def read_advert(properties: Mapping[bytes, bytes | None], addresses: Sequence[str],
                srv_port: int | None) -> Advert:
    """Reads a resolved ``_nexus._tcp`` service into an :class:`Advert`.

    Args:
        properties: The TXT record as zeroconf decodes it (keys and values as bytes; a
            value is None for a key present without ``=``, RFC 6763 §6.4).
        addresses: The service's addresses (A/AAAA records), as strings.
        srv_port: The SRV record's port, the authoritative one (RFC 6763 §5).

    Returns:
        The advert; the address is the first IPv4 address, else the first IPv6 one.

    Raises:
        ValueError: a required key is missing or malformed, the TXT port disagrees with the
            SRV port, or the service has no address.
    """
    txt = {k.decode("utf-8", "replace").lower(): (v or b"").decode("utf-8", "replace")
           for k, v in properties.items()}   # RFC 6763 §6.4: keys are case-insensitive
    for key in (KEY_NODE, KEY_CLUSTER, KEY_PROTOCOL):
        if not txt.get(key):
            raise ValueError(f"TXT record lacks {key!r}")
    try:
        protocol = int(txt[KEY_PROTOCOL])
    except ValueError:
        raise ValueError(f"TXT {KEY_PROTOCOL}={txt[KEY_PROTOCOL]!r} is not a number") from None
    if not srv_port:
        raise ValueError("no SRV port")
    if txt.get(KEY_PORT) and txt[KEY_PORT] != str(srv_port):
        raise ValueError(f"TXT port {txt[KEY_PORT]} disagrees with SRV port {srv_port}")
    parsed = [ipaddress.ip_address(a) for a in addresses]
    ordered = [a for a in parsed if a.version == 4] + [a for a in parsed if a.version == 6]
    if not ordered:
        raise ValueError("no address")
    return Advert(txt[KEY_NODE], txt[KEY_CLUSTER], protocol, join_host_port(str(ordered[0]), srv_port))


def refusal(advert: Advert, *, node_id: str, cluster: str, protocol_version: int) -> str | None:
    """Why ``advert`` may not be a peer of this node, or None if it may.

    Args:
        advert: What the other node announced.
        node_id: This node's id (a node hears its own announcements: RFC 6762 §5.2
            multicast loops back to the sender).
        cluster: This node's cluster name; names are compared exactly, as ``Hello`` does.
        protocol_version: This node's peer protocol version.
    """
    if advert.node_id == node_id:
        return "this node itself"
    if advert.cluster != cluster:
        return f"cluster {advert.cluster!r}, not {cluster!r}"
    if advert.protocol_version != protocol_version:
        return f"peer protocol {advert.protocol_version}, not {protocol_version}"
    return None


def join_host_port(host: str, port: int) -> str:
    """``host:port``, bracketing an IPv6 literal (RFC 3986 §3.2.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_seeds(text: str) -> list[str]:
    """Parses ``--seeds host:port,host:port,...`` (IPv6 as ``[addr]:port``).

    Returns:
        The seeds as normalised ``host:port`` strings, duplicates removed, in order.

    Raises:
        ValueError: a seed is not ``host:port`` with a port in 1..65535.
    """
    seeds: list[str] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        host, sep, port_text = item.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"seed {item!r}: write an IPv6 address as [addr]:port")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"seed {item!r} is not host:port")
        seed = join_host_port(host, int(port_text))
        if seed not in seeds:
            seeds.append(seed)
    return seeds


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback literals (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def advertise_host(bind_host: str, explicit: str | None, primary: str | None) -> tuple[str | None, str]:
    """The address this node tells peers to use, or None and why it should not advertise.

    Args:
        bind_host: ``--host``.
        explicit: ``--advertise-host``, which always wins.
        primary: The primary interface's address (the caller looks it up), used for a
            wildcard bind.

    Returns:
        ``(address, "")``, or ``(None, reason)``.

    A node bound to loopback only is reachable from its own host only: announcing it to the
    LAN would hand other machines an address that leads back to themselves, so such a node
    does not advertise (nor browse) unless ``--advertise-host`` says otherwise. mDNS
    address records hold IP addresses (RFC 6762 §6), so a host name bound to is not
    announced either.
    """
    if explicit:
        return explicit, ""
    if bind_host in ("0.0.0.0", "::", ""):
        if primary is None:
            return None, "no interface with a default route to announce"
        return primary, ""
    if is_loopback(bind_host):
        return None, "bound to loopback only (pass --advertise-host to announce anyway)"
    try:
        ipaddress.ip_address(bind_host.strip("[]"))
    except ValueError:
        return None, f"bound to host name {bind_host!r} (pass --advertise-host with its IP address)"
    return bind_host.strip("[]"), ""


@dataclass(frozen=True)
class Peer:
    """One entry of the :class:`PeerDirectory`.

    Attributes:
        node_id: The peer's id, or "" for a seed not identified yet (a seed is only an
            address until the peer answers ``Hello`` or is heard by mDNS).
        address: ``host:port``.
        source: How it was found: ``"mdns"``, ``"seed"``, or ``"peer"`` (another node named it
            as a member of its cluster).
        last_seen: Unix seconds of the last announcement heard (for a seed: when listed).
    """

    node_id: str
    address: str
    source: Source
    last_seen: float


class PeerDirectory:
    """The nodes this node knows of that may be peers (not yet members: the mesh decides).

    Identified peers are keyed by node id: a node announcing a new address (restarted on
    another port) replaces its old entry. A seed is keyed by its address until a node is
    identified at that address, when the seed entry becomes that node's.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, Peer] = {}
        self._seeds: dict[str, Peer] = {}   # unidentified seeds by address

    def add_seeds(self, addresses: Iterable[str], now: float) -> bool:
        """Lists ``addresses`` as unidentified seeds; returns True if anything was added."""
        known = {p.address for p in self._by_id.values()} | set(self._seeds)
        new = [a for a in addresses if a not in known]
        for address in new:
            self._seeds[address] = Peer("", address, "seed", now)
        return bool(new)

    def found(self, node_id: str, address: str, source: Source, now: float) -> bool:
        """Records that ``node_id`` is at ``address``.

        Returns:
            True if the directory changed beyond the ``last_seen`` time (a new peer, a new
            address, or a seed identified).
        """
        old = self._by_id.get(node_id)
        seed = self._seeds.pop(address, None)
        # A node first listed as a seed stays a seed peer: that is how the operator named it.
        if seed is not None or (old is not None and old.source == "seed" and old.address == address):
            source = "seed"
        self._by_id[node_id] = Peer(node_id, address, source, now)
        return old is None or old.address != address or old.source != source or seed is not None

    def told(self, node_id: str, address: str, now: float) -> bool:
        """Records a member another node named in a Hello, unless this node knows the peer
        already: first-hand knowledge (mDNS, a seed, the peer's own Hello) is never replaced
        by second-hand, which may be stale.

        Returns:
            True if a peer was added.
        """
        if node_id in self._by_id or address in self._seeds:
            return False
        self._by_id[node_id] = Peer(node_id, address, "peer", now)
        return True

    def lost(self, node_id: str) -> bool:
        """Forgets an mDNS peer that said goodbye (RFC 6762 §10.1) or expired.

        Seed peers stay: the operator listed them and they are tried again.

        Returns:
            True if an entry was removed.
        """
        peer = self._by_id.get(node_id)
        if peer is None or peer.source != "mdns":
            return False
        del self._by_id[node_id]
        return True

    def get(self, node_id: str) -> Peer | None:
        """The entry of ``node_id``, if any."""
        return self._by_id.get(node_id)

    def peers(self) -> list[Peer]:
        """Every entry: identified ones by node id, then unidentified seeds by address."""
        return ([self._by_id[k] for k in sorted(self._by_id)]
                + [self._seeds[k] for k in sorted(self._seeds)])
