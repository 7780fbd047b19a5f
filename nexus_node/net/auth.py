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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import grpc

from nexus_node.net.roles import Role, required_role, role_name
from nexus_node.net.tls import ClientTls
from nexus_node.net.tls import channel as tls_channel

METADATA_KEY = "authorization"
TOKEN_FILENAME = "token"


def default_data_dir() -> Path:
    return Path(os.environ.get("NEXUS_DATA_DIR", Path.home() / ".nexus"))


def read_token_file(path: str | os.PathLike[str]) -> str:
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def read_peer_secrets(path: str | os.PathLike[str]) -> list[str]:
    """The secrets of a ``--peer-secret-file``: one per line. A node sends the first and
    accepts every one, so a secret is rotated by rolling restarts without a node ever refusing
    another: first list the new one second (every node accepts it), then first (every node
    sends it), then alone (README, "Tokens and roles").

    Raises:
        ValueError: the file holds no secret.
    """
    secrets_ = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not secrets_:
        raise ValueError(f"peer secret file {path} is empty: put the cluster's peer secret in it")
    return secrets_


def client_token(token: str | None = None, token_file: str | None = None) -> str | None:
    """The token a client sends: explicit, ``--token-file``, ``NEXUS_TOKEN``, then the
    default data dir's token file (so a CLI on the node's own machine just works). What a
    caller names outranks what the environment holds."""
    if token:
        return token
    if token_file:
        return read_token_file(token_file)
    if os.environ.get("NEXUS_TOKEN"):
        return os.environ["NEXUS_TOKEN"].strip()
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


def bearer(metadata: Any) -> str | None:
    """The secret of the call's ``authorization: Bearer ...`` header, if any."""
    for key, value in metadata or ():
        if key == METADATA_KEY:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            return value[len("Bearer "):] if value.startswith("Bearer ") else None
    return None


@dataclass(frozen=True)
class Grant:
    """What a credential may do: its role, and a name for messages (never the secret)."""

    role: Role
    name: str
    revocable: bool = False   # a client token from the replicated state (not a file's secret)


#: Looks a client token up in the replicated state: its grant, or None (unknown or revoked).
TokenLookup = Callable[[str], "Grant | None"]


class ServerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Admits each call whose credential holds the role its method needs (:mod:`nexus_node.net.roles`).

    Args:
        peer_secrets: Admit cluster members and the node's runners, and grant every client
            role too (several while a secret is rotated: see :func:`read_peer_secrets`); a str
            is one; empty: no peer secret (an open loopback node).
        admin_token: The node's bootstrap client token (``--token-file`` or the data dir's
            ``token``) when it is not also a peer secret; it has the admin role.
        lookup: Client tokens created with ``nexus token create``, checked against the
            replicated state on every call, so a revocation applies to the next call.
        open_clients: No client token is configured (a loopback node without one): calls with
            no credential get every client role, as before roles existed; the peer secret is
            still needed for PeerService.

    A call without a valid credential is UNAUTHENTICATED, whatever its method, even one the
    server does not have, so the API cannot be probed; a valid one short of the role is
    PERMISSION_DENIED, naming the role needed.
    """

    def __init__(self, peer_secrets: Sequence[str] | str | None, admin_token: str | None = None,
                 lookup: TokenLookup = lambda secret: None, open_clients: bool = False) -> None:
        secrets_ = [peer_secrets] if isinstance(peer_secrets, str) else list(peer_secrets or ())
        self._peers = [p.encode() for p in secrets_ if p]
        self._admin = admin_token.encode() if admin_token and admin_token not in secrets_ else None
        self.lookup = lookup
        self._open = open_clients

    def grant(self, metadata: Any) -> Grant | None:
        """The caller's grant, or None if its credential is missing or unknown."""
        secret = bearer(metadata)
        if secret is None:
            return None
        raw = secret.encode()
        # Every secret is compared (no early exit), so the time taken says nothing of which.
        if sum(hmac.compare_digest(raw, p) for p in self._peers):
            return Grant(Role.PEER, "the peer secret")
        if self._admin is not None and hmac.compare_digest(raw, self._admin):
            return Grant(Role.ADMIN, "the node's admin token")
        return self.lookup(secret)

    def is_peer(self, metadata: Any) -> bool:
        """Whether the call carries a peer secret (a member node or this node's runner)."""
        grant = self.grant(metadata)
        return grant is not None and grant.role is Role.PEER

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        need = required_role(details.method)
        if need is None:
            return await continuation(details)
        grant = self.grant(details.invocation_metadata)
        if grant is None and self._open and need is not Role.PEER and bearer(details.invocation_metadata) is None:
            grant = Grant(Role.ADMIN, "an open loopback node")
        if grant is not None and grant.role >= need:
            handler = await continuation(details)
            if grant.revocable and handler is not None and handler.response_streaming:
                return self._rechecked(handler, bearer(details.invocation_metadata) or "")
            return handler
        handler = await continuation(details)
        if grant is None:
            return self._denial(handler, grpc.StatusCode.UNAUTHENTICATED, _DENIED)
        if handler is None:
            return None   # an authenticated caller may learn that a method does not exist
        method = details.method.rsplit("/", 1)[-1]
        what = ("the cluster's peer secret: it is for member nodes and their runners, never clients"
                if need is Role.PEER else f"a token with the {role_name(need)!r} role")
        return self._denial(handler, grpc.StatusCode.PERMISSION_DENIED,
                            f"{method} needs {what}; {grant.name} has the {role_name(grant.role)!r} role")

    def _rechecked(self, handler: Any, secret: str) -> Any:
        """``handler`` with the token checked again before each message it streams: a watch
        opened before a revocation sends nothing after it."""
        inner = handler.unary_stream or handler.stream_stream

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            answer = inner(request, context)
            if not hasattr(answer, "__aiter__"):
                # A handler that writes with context.write, not one that yields: none of this
                # node's does, and none could be checked per message; it runs as it is.
                await answer
                return
            async for item in answer:
                if self.lookup(secret) is None:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the token was revoked: " + _DENIED)
                yield item

        make = (grpc.unary_stream_rpc_method_handler if handler.unary_stream
                else grpc.stream_stream_rpc_method_handler)
        return make(behaviour, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    def _denial(self, handler: Any, code: grpc.StatusCode, message: str) -> Any:
        async def deny_unary(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(code, message)

        async def deny_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(code, message)

        # A method the server lacks has no handler: any kind answers, since the denial reads
        # no request.
        kind = (handler.request_streaming, handler.response_streaming) if handler is not None else (True, True)
        return {
            (False, False): grpc.unary_unary_rpc_method_handler(deny_unary),
            (False, True): grpc.unary_stream_rpc_method_handler(deny_unary),
            (True, False): grpc.stream_unary_rpc_method_handler(deny_stream),
            (True, True): grpc.stream_stream_rpc_method_handler(deny_stream),
        }[kind]


# Said to every client, whatever its language: the header first, then the CLI's ways to set it.
_DENIED = (
    "missing, unknown or revoked token: send the metadata `authorization: Bearer <token>` "
    "(the nexus CLI: --token-file or NEXUS_TOKEN; the first token is in the node's data dir; "
    "a node: give it the cluster's --peer-secret-file)"
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

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
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
    :func:`nexus_node.net.tls.client_tls`), plaintext otherwise."""
    channel = tls_channel(address, tls, CHANNEL_OPTIONS)
    if token:
        channel = grpc.intercept_channel(channel, _ClientAuth(token))
    return channel
