"""``nexus optuna-proxy``: a loopback gRPC server that forwards Optuna's storage calls to a node
with the client's token and TLS settings.

Optuna's ``GrpcStorageProxy`` (and code built on it, optuna-dashboard included) takes a host and
a port only: it cannot send ``authorization`` metadata nor speak TLS, so it reaches no node that
has a token. This server speaks plaintext to such code on loopback and forwards each
``optuna.StorageService`` call as it is to a node, over the channel of a
:class:`~nexus_client.client.NexusClient` (token attached, TLS as configured). Calls travel as
raw bytes, looked up by method name: the forwarder knows neither Optuna's messages nor its
private protobuf modules, so a method a later Optuna adds passes through, and the node's roles
decide what the token may do (:mod:`nexus_node.net.roles`). Other services are not forwarded.

It listens on loopback only: whoever connects acts with the token it holds.

Example::

    from nexus_client.client import NexusClient
    from nexus_client.optuna_proxy import OptunaProxy

    with NexusClient("node:7070", token_file="token") as nexus, \\
            OptunaProxy(nexus.channel, "127.0.0.1:0") as proxy:
        ...  # optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=proxy.port)
"""

from __future__ import annotations

from concurrent import futures
from typing import Any, Callable

import grpc

from nexus_node.net import auth

#: The gRPC path prefix of every call forwarded: Optuna's storage service, as nodes serve it.
STORAGE_SERVICE = "/optuna.StorageService/"
#: A read every token may make (its request message is empty): :meth:`OptunaProxy.check_node`.
_PROBE = STORAGE_SERVICE + "GetAllStudies"
#: A caller's time remaining past this (about 30 years) means it set no deadline.
NO_DEADLINE_S = 1e9
#: Forwarded calls in flight at once; each holds a thread while the node answers (a write waits
#: for a consensus round).
MAX_CALLS = 16


class ListenError(ValueError):
    """A ``--listen`` address the proxy may not or cannot use."""


def parse_listen(address: str) -> tuple[str, int]:
    """``HOST:PORT`` of a loopback interface (port 0: any free one) → ``(host, port)``.

    Raises:
        ListenError: no port, a bad one, or a host that is not loopback.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ListenError(f"--listen {address!r}: write HOST:PORT on loopback, e.g. 127.0.0.1:13000")
    if not auth.is_loopback(host):
        raise ListenError(
            f"--listen {address!r}: the proxy hands the cluster token to whoever connects, so it listens on "
            "loopback only (127.0.0.1, [::1] or localhost); run it on the machine where Optuna runs")
    return host, int(port)


class _Forward(grpc.GenericRpcHandler):
    """Hands every unary call under :data:`STORAGE_SERVICE` to ``channel``, bytes in and out."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if not method.startswith(STORAGE_SERVICE):
            return None   # UNIMPLEMENTED: the token is lent to Optuna's storage calls only
        # No (de)serializers on either side: the request and reply stay the bytes on the wire.
        call: Callable[..., bytes] = self._channel.unary_unary(method)

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            # The caller's deadline goes on to the node. Optuna's proxy sets none, which gRPC
            # reports as ~2^63 s remaining; passed on as a timeout that overflows into an
            # immediate DEADLINE_EXCEEDED, so it goes on as no deadline.
            remaining = context.time_remaining()
            try:
                return call(request, timeout=remaining if remaining < NO_DEADLINE_S else None)
            except grpc.RpcError as e:
                # The node's status and message reach the caller as the node said them.
                context.abort(e.code(), e.details() or "")
                raise   # abort raises; this line is never reached

        return grpc.unary_unary_rpc_method_handler(forward)


class OptunaProxy:
    """A gRPC server on ``listen`` forwarding Optuna's storage calls to the node behind ``channel``.

    Args:
        channel: A channel to a node that attaches the token (``NexusClient.channel``).
        listen: ``HOST:PORT`` on loopback; port 0 picks a free one (see :attr:`port`).

    Raises:
        ListenError: ``listen`` is not a loopback address, or it cannot be bound.
    """

    def __init__(self, channel: grpc.Channel, listen: str) -> None:
        self.host, port = parse_listen(listen)
        self._channel = channel
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_CALLS),
                                   handlers=[_Forward(channel)], options=auth.SERVER_OPTIONS)
        try:
            self.port = self._server.add_insecure_port(f"{self.host}:{port}")
        except RuntimeError as e:   # grpc raises RuntimeError when the port cannot be bound
            raise ListenError(f"--listen {listen!r}: cannot listen there ({e}); is the port in use?") from None

    def check_node(self, timeout: float = 10.0) -> None:
        """Reads the node's study list through the channel: proof that the node answers and
        takes the token, before any Optuna code relies on the proxy.

        Raises:
            grpc.RpcError: the node's refusal (UNAUTHENTICATED, PERMISSION_DENIED) or UNAVAILABLE.
        """
        self._channel.unary_unary(_PROBE)(b"", timeout=timeout)

    def start(self) -> "OptunaProxy":
        self._server.start()
        return self

    def wait(self) -> None:
        """Blocks until :meth:`stop` (from another thread or a signal handler)."""
        self._server.wait_for_termination()

    def stop(self, grace: float | None = 1.0) -> None:
        """Stops listening; calls in flight get ``grace`` seconds to finish."""
        self._server.stop(grace)

    def __enter__(self) -> "OptunaProxy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
