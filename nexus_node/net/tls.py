"""Optional TLS: the node's certificate, and channels that check the server they reach.

A node started with ``--tls-cert`` and ``--tls-key`` serves TLS only, on its one port. It checks
every peer it dials against ``--tls-ca`` (the CA that signed the cluster's node certificates;
the system's roots when absent): a peer whose certificate the CA did not sign, or that does not
name the address the peer is dialled at, is never talked to. Clients are not asked for
certificates: the peer secret or a client token (:mod:`nexus_node.net.auth`) still
authenticates every call, TLS keeps them and the data private and proves the node is one of the
cluster's.

Runners reach their own node's ``StorageService`` on loopback. They check the node's
certificate against the same CA, with ``grpc.ssl_target_name_override`` set to a name the
certificate carries (:attr:`NodeTls.server_name`): a certificate made for the node's LAN name
or address works without also naming 127.0.0.1, and nothing about the check is weakened (the
chain must still lead to the CA; the name is the node's own).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import grpc

#: Where clients find the CA when ``--tls-ca`` is not given.
ENV_CA = "NEXUS_TLS_CA"

Options = Sequence[tuple[str, Any]]


class TlsError(ValueError):
    """A TLS setting that cannot work: a missing half, an unreadable or invalid file."""


@dataclass(frozen=True)
class ClientTls:
    """How a client checks the server it dials.

    Args:
        ca_file: PEM file of the CA to trust; None: the system's roots.
        server_name: The name to expect in the server's certificate instead of the dialled
            host (runners on loopback); None: the dialled host.
    """

    ca_file: str | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=_read(self.ca_file, "CA") if self.ca_file else None)

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def spec(self) -> dict[str, Any]:
        """The fields added to the ``storage`` dict a runner gets (see :func:`from_spec`)."""
        return {"tls": True, "tls_ca": self.ca_file or "", "tls_name": self.server_name or ""}


@dataclass(frozen=True)
class NodeTls:
    """A node's certificate and key (PEM) and the CA it checks peers against."""

    cert_file: str
    key_file: str
    ca_file: str | None
    cert: bytes
    key: bytes
    server_name: str   # a name the certificate carries, for loopback connections

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)])

    @property
    def peers(self) -> ClientTls:
        return ClientTls(self.ca_file)

    @property
    def loopback(self) -> ClientTls:
        return ClientTls(self.ca_file, self.server_name)


def load_node_tls(cert_file: str | os.PathLike[str] | None, key_file: str | os.PathLike[str] | None,
                  ca_file: str | os.PathLike[str] | None) -> NodeTls | None:
    """The node's TLS settings, checked; None when the node serves plaintext.

    Raises:
        TlsError: one of cert/key without the other, a CA without them, a file that cannot be
            read, that is not PEM, or a key that does not belong to the certificate.
    """
    if not cert_file and not key_file:
        if ca_file:
            raise TlsError("--tls-ca needs --tls-cert and --tls-key: a node without a certificate "
                           "serves and dials plaintext")
        return None
    if not cert_file or not key_file:
        given, missing = ("--tls-cert", "--tls-key") if cert_file else ("--tls-key", "--tls-cert")
        raise TlsError(f"{given} needs {missing}: a node serves TLS with its certificate and key together")
    cert_file, key_file = str(cert_file), str(key_file)
    cert, key = _read(cert_file, "--tls-cert"), _read(key_file, "--tls-key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_password)
    except _Encrypted:
        raise TlsError(f"--tls-key {key_file} is encrypted: nexus-node needs an unencrypted key "
                       "(keep it readable by the node's user only)") from None
    except ssl.SSLError as exc:
        raise TlsError(f"--tls-cert {cert_file} / --tls-key {key_file}: not a PEM certificate and "
                       f"its private key ({exc.reason or exc})") from None
    ca = str(ca_file) if ca_file else None
    if ca:
        check_ca(ca, "--tls-ca")
    return NodeTls(cert_file, key_file, ca, cert, key, _name_in(cert_file))


def client_tls(ca_file: str | None = None, env: Mapping[str, str] = os.environ) -> ClientTls | None:
    """A client's TLS: ``--tls-ca``, else ``NEXUS_TLS_CA``; None (plaintext) when neither is
    set, or when ``ca_file`` is ``""`` (plaintext whatever the environment says).

    Raises:
        TlsError: the CA file cannot be read or holds no certificate.
    """
    path = env.get(ENV_CA, "").strip() if ca_file is None else ca_file
    if not path:
        return None
    check_ca(path, ENV_CA if ca_file is None else "--tls-ca")
    return ClientTls(path)


def from_spec(spec: Mapping[str, Any]) -> ClientTls | None:
    """The runner's side of :meth:`ClientTls.spec`: TLS to its node's storage, or None."""
    if not spec.get("tls"):
        return None
    return ClientTls(spec.get("tls_ca") or None, spec.get("tls_name") or None)


def storage_fields(tls: NodeTls | None) -> dict[str, Any]:
    """What a node adds to the ``storage`` dict of its runners' tasks (nothing when plaintext)."""
    return tls.loopback.spec() if tls else {}


def check_ca(path: str, flag: str) -> None:
    _read(path, flag)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise TlsError(f"{flag} {path}: no PEM certificate in it") from None


def add_port(server: grpc.aio.Server, address: str, tls: NodeTls | None) -> int:
    """Listens on ``address``: TLS only when the node has a certificate, else plaintext."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.server_credentials())


def channel(address: str, tls: ClientTls | None, options: Options = ()) -> grpc.Channel:
    """A sync channel: TLS checked by ``tls``, or plaintext when it is None."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.credentials(), options=list(options) + tls.options())


def aio_channel(address: str, tls: ClientTls | None, options: Options = ()) -> grpc.aio.Channel:
    """An asyncio channel: TLS checked by ``tls``, or plaintext when it is None."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, tls.credentials(), options=list(options) + tls.options())


# ---- internals ------------------------------------------------------------------------------


class _Encrypted(Exception):
    pass


def _no_password() -> bytes:
    raise _Encrypted()


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    if not data.strip():
        raise TlsError(f"{what} {path} is empty")
    return data


def _name_in(cert_file: str) -> str:
    """A name the certificate is valid for: a DNS name, else an IP address, else its common name.

    Read with the standard library's certificate decoder (CPython's ``ssl`` test helper; no
    extra package). A wildcard ``*.example.com`` yields ``nexus.example.com``.
    """
    try:
        info = ssl._ssl._test_decode_cert(cert_file)  # type: ignore[attr-defined]
    except (AttributeError, ssl.SSLError, OSError) as exc:
        raise TlsError(f"--tls-cert {cert_file}: cannot read the names in it ({exc})") from None
    sans = info.get("subjectAltName", ())
    dns = [v for k, v in sans if k == "DNS"]
    for name in dns:
        if "*" not in name:
            return name
    if dns and dns[0].startswith("*."):
        return "nexus" + dns[0][1:]
    for k, v in sans:
        if k == "IP Address":
            return str(ipaddress.ip_address(v.strip()))
    for rdn in info.get("subject", ()):
        for k, v in rdn:
            if k == "commonName" and v:
                return v
    raise TlsError(f"--tls-cert {cert_file} names no host (no subjectAltName, no common name)")
