"""Cluster token: where it comes from, how clients attach it, how the server checks it.

Every RPC except gRPC health checking carries ``authorization: Bearer <token>`` when the
node has a token. A node on loopback with no token is open to local clients (development,
the demo); a node bound elsewhere without one creates a token in its data dir.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path
from typing import Any, Callable

import grpc

from nexus_node.tls import ClientTls
from nexus_node.tls import channel as tls_channel

METADATA_KEY = "authorization"
TOKEN_FILENAME = "token"
# Health checks must work for load balancers and orchestrators that hold no token.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def default_data_dir() -> Path:
    return Path(os.environ.get("NEXUS_DATA_DIR", Path.home() / ".nexus"))


def read_token_file(path: str | os.PathLike[str]) -> str:
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def client_token(token: str | None = None, token_file: str | None = None) -> str | None:
    """The token a client sends: explicit, ``NEXUS_TOKEN``, ``--token-file``, then the
    default data dir's token file (so a CLI on the node's own machine just works)."""
    if token:
        return token
    if os.environ.get("NEXUS_TOKEN"):
        return os.environ["NEXUS_TOKEN"].strip()
    if token_file:
        return read_token_file(token_file)
    default = default_data_dir() / TOKEN_FILENAME
    if default.is_file():
        try:
            return read_token_file(default)
        except (OSError, ValueError):
            return None
    return None


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def node_token(host: str, data_dir: Path, token_file: str | None) -> tuple[str | None, str]:
    """Decide the node's token. Returns ``(token or None, a line saying what was decided)``."""
    if token_file:
        return read_token_file(token_file), f"token from {token_file}"
    existing = data_dir / TOKEN_FILENAME
    if existing.is_file():
        return read_token_file(existing), f"token from {existing}"
    if is_loopback(host):
        return None, "no token: open to clients on this machine only (loopback)"
    existing.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(existing, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return read_token_file(existing), f"created a token in {existing}: give it to clients and peers"


def token_matches(metadata: Any, token: str) -> bool:
    expected = f"Bearer {token}"
    for key, value in metadata or ():
        if key == METADATA_KEY:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            return hmac.compare_digest(value, expected)
    return False


class ServerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without the token, except health checks."""

    def __init__(self, token: str) -> None:
        self._token = token

        async def deny_unary(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)

        async def deny_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)

        self._deny = {
            (False, False): grpc.unary_unary_rpc_method_handler(deny_unary),
            (False, True): grpc.unary_stream_rpc_method_handler(deny_unary),
            (True, False): grpc.stream_unary_rpc_method_handler(deny_stream),
            (True, True): grpc.stream_stream_rpc_method_handler(deny_stream),
        }

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        if details.method.startswith(OPEN_METHOD_PREFIXES) or token_matches(
            details.invocation_metadata, self._token
        ):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None
        return self._deny[(handler.request_streaming, handler.response_streaming)]


_DENIED = (
    "missing or wrong cluster token: pass --token-file, set NEXUS_TOKEN, or read the token "
    "from the node's data dir"
)


class _ClientAuth(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self._md = (METADATA_KEY, f"Bearer {token}")

    def _details(self, d: Any) -> Any:
        md = list(d.metadata or []) + [self._md]
        return d._replace(metadata=md) if hasattr(d, "_replace") else _Details(d, md)

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[override]
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[override]
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[override]
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[override]
        return continuation(self._details(client_call_details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, d: Any, metadata: list) -> None:
        self.method = d.method
        self.timeout = d.timeout
        self.metadata = metadata
        self.credentials = d.credentials
        self.wait_for_ready = getattr(d, "wait_for_ready", None)
        self.compression = getattr(d, "compression", None)


#: Keepalive: while a call is open (a WatchCluster or WatchJob stream), the client pings the
#: node every KEEPALIVE_S seconds and gives the connection up when a ping is not answered in
#: KEEPALIVE_TIMEOUT_S: a node that hangs (or a link that drops silently) ends the stream in
#: seconds instead of never. Nodes accept pings that often (SERVER_OPTIONS).
KEEPALIVE_S, KEEPALIVE_TIMEOUT_S = 10, 5
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", KEEPALIVE_S * 1000),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
    # By default a client stops pinging after 2 pings with no data sent: a watch stream is
    # exactly that (data only flows down), so the limit would end the keepalive.
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    # gRPC servers answer pings more frequent than every 5 minutes with GOAWAY by default.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_S * 1000 // 2),
    ("grpc.http2.max_ping_strikes", 0),
]


def secure_channel(address: str, token: str | None, tls: ClientTls | None = None) -> grpc.Channel:
    """A sync channel that attaches the token to every call; TLS when ``tls`` is given (see
    :func:`nexus_node.tls.client_tls`), plaintext otherwise."""
    channel = tls_channel(address, tls, CHANNEL_OPTIONS)
    if token:
        channel = grpc.intercept_channel(channel, _ClientAuth(token))
    return channel
