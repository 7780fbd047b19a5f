"""Finding nodes on the LAN by mDNS (RFC 6762/6763): browse ``_nexus._tcp.local.``."""

from __future__ import annotations

import threading

from zeroconf import ServiceBrowser, ServiceListener, Zeroconf

SERVICE = "_nexus._tcp.local."


class _Collector(ServiceListener):
    def __init__(self) -> None:
        self.names: set[str] = set()
        self.lock = threading.Lock()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            self.names.add(name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.add_service(zc, type_, name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            self.names.discard(name)


def browse(timeout: float = 1.5) -> list[str]:
    """``HOST:PORT`` of every Nexus node that answers within ``timeout`` seconds.

    Browsing is passive listening plus queries, so it takes the whole ``timeout``; the app
    runs it in a thread worker. Any failure to open the multicast sockets (no network,
    no permission) means "none found", which the connect screen then says.
    """
    try:
        zc = Zeroconf()
    except OSError:
        return []
    try:
        collector = _Collector()
        browser = ServiceBrowser(zc, SERVICE, collector)
        threading.Event().wait(timeout)   # mDNS answers arrive over the whole window
        browser.cancel()
        found: list[str] = []
        with collector.lock:
            names = sorted(collector.names)
        for name in names:
            info = zc.get_service_info(SERVICE, name, timeout=500)
            if info is None or not info.port:
                continue
            for addr in info.parsed_addresses():
                host = f"[{addr}]" if ":" in addr else addr
                found.append(f"{host}:{info.port}")
        return found
    finally:
        zc.close()
