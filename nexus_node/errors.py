"""Domain errors. Servicers map each kind to one gRPC status code; runners send the kind
and message back to the node as JSON, so the node re-raises the same class."""

from __future__ import annotations


class NexusError(Exception):
    """Base class. ``kind`` is the wire name used between runner and node."""

    kind = "internal"


class InvalidInput(NexusError):
    """The user's input cannot be used as given; the message says what to fix."""

    kind = "invalid_input"


class NotFound(NexusError):
    kind = "not_found"


class FailedPrecondition(NexusError):
    """The request is valid but the system is not in a state to serve it."""

    kind = "failed_precondition"


class TooLarge(NexusError):
    kind = "too_large"


class Unauthenticated(NexusError):
    kind = "unauthenticated"


class AlreadyExists(NexusError):
    """A name is taken (a token's)."""

    kind = "already_exists"


_BY_KIND = {c.kind: c for c in (NexusError, InvalidInput, NotFound, FailedPrecondition, TooLarge, Unauthenticated,
                                 AlreadyExists)}


def error_from_kind(kind: str, message: str) -> NexusError:
    """Rebuild a domain error sent over the runner protocol."""
    return _BY_KIND.get(kind, NexusError)(message)
