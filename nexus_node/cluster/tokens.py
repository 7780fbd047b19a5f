"""Client tokens as part of the replicated state: names, roles and SHA-256 digests, never secrets.

Every node applies the same committed ``tokens`` commands, so every node checks a token against
the same table, locally, on every call (:meth:`ReplicatedTokens.grant`), and a revocation takes
effect on each node as it applies it: within a heartbeat or two of its commit.

A token is 32 random bytes, so a plain SHA-256 of it cannot be guessed back; a slow password
hash would only add its cost to every call.

Rules applied here, identically everywhere:

* a name is taken by the first ``put_token`` that names it; a later one with the same name (two
  nodes creating it at once) changes nothing, and its creator reports the name as in use;
* ``revoke_token`` of a name that is not there changes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
import uuid
from typing import Any, Callable, Iterable

from nexus_node.consensus.driver import RaftDriver
from nexus_node.consensus.state import encode_command
from nexus_node.net.roles import CLIENT_ROLES, Role, check_token_name

#: The state machine's command kind for tokens.
KIND = "tokens"

_PREFIX = "nxt_"   # tells a client token from a peer secret or an old cluster token at a glance


def digest(secret: str) -> str:
    """The SHA-256 the cluster keeps of a token's secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class TokenRecord:
    name: str
    role: Role
    sha256: str
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role.name.lower(), "sha256": self.sha256,
                "created_at": self.created_at}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TokenRecord":
        validate_token(raw)
        return cls(raw["name"], CLIENT_ROLES[raw["role"]], raw["sha256"], float(raw["created_at"]))


class TokenNameTaken(Exception):
    """Another token has this name."""


def validate_token(raw: Any) -> None:
    """Raises ValueError saying what is wrong with an encoded :class:`TokenRecord`."""
    if not isinstance(raw, dict) or set(raw) != {"name", "role", "sha256", "created_at"}:
        raise ValueError("a token is an object of name, role, sha256 and created_at")
    if not isinstance(raw["name"], str) or (problem := check_token_name(raw["name"])):
        raise ValueError(problem or "a token's name is a string")
    if type(raw["role"]) is not str or raw["role"] not in CLIENT_ROLES:
        raise ValueError(f"a token's role is one of {', '.join(CLIENT_ROLES)}")
    sha = raw["sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError("a token's sha256 is 64 lowercase hex digits")
    at = raw["created_at"]
    # Compared, not passed to math.isfinite: an int of 400 digits (valid JSON) overflows it.
    # NaN and infinities fail the comparison too.
    if type(at) not in (int, float) or not 0 <= at < 1e12:
        raise ValueError("a token's created_at is a number of unix seconds")


def validate_body(body: Any) -> None:
    """The ``tokens`` command's validator (see ``ReplicatedState.register``).

    Raises:
        ValueError: ``body`` is not a well-formed command.
    """
    if not isinstance(body, dict):
        raise ValueError("a tokens command is an object")
    op = body.get("op")
    if op == "put_token" and set(body) == {"op", "token"}:
        validate_token(body["token"])
    elif op == "revoke_token" and set(body) == {"op", "name"}:
        if not isinstance(body["name"], str) or check_token_name(body["name"]):
            raise ValueError("revoke_token names a token")
    else:
        raise ValueError(f"unknown tokens command {op!r}")


class ReplicatedTokens:
    """The applied client tokens of one node, and the writers that commit changes.

    Register before :meth:`RaftDriver.start` so the replayed log reaches it. Reads are plain
    dict lookups, safe from the event loop on every call.
    """

    def __init__(self, driver: RaftDriver) -> None:
        self.driver = driver
        self._by_name: dict[str, TokenRecord] = {}
        self._by_digest: dict[str, TokenRecord] = {}
        driver.state.register(KIND, self._apply, validate=validate_body,
                              capture=self._capture, restore=self._restore)

    # ---- apply (driver task) ------------------------------------------------------------------

    def _apply(self, body: Any, index: int) -> Any:
        try:
            validate_body(body)
        except (ValueError, TypeError):
            return None   # malformed: skipped the same way on every node
        if body["op"] == "put_token":
            token = TokenRecord.from_dict(body["token"])
            if token.name not in self._by_name and token.sha256 not in self._by_digest:
                self._by_name[token.name] = token
                self._by_digest[token.sha256] = token
        else:
            gone = self._by_name.pop(body["name"], None)
            if gone is not None:
                self._by_digest.pop(gone.sha256, None)
        return None

    # ---- snapshots (driver task) ---------------------------------------------------------------

    def _capture(self) -> Callable[[], Iterable[dict[str, Any]]]:
        tokens = list(self._by_name.values())   # records are frozen: the list is the copy
        return lambda: (t.to_dict() for t in tokens)

    def _restore(self, items: Iterable[Any], index: int = 0) -> None:
        """Replaces every token by a snapshot's (their :meth:`TokenRecord.to_dict` forms).

        Raises:
            ValueError: an item is not a token, or two share a name or a secret.
        """
        by_name: dict[str, TokenRecord] = {}
        by_digest: dict[str, TokenRecord] = {}
        for raw in items:
            token = TokenRecord.from_dict(raw)
            if token.name in by_name or token.sha256 in by_digest:
                raise ValueError(f"token {token.name!r} is there twice (by name or by secret)")
            by_name[token.name] = by_digest[token.sha256] = token
        self._by_name, self._by_digest = by_name, by_digest

    # ---- reads ----------------------------------------------------------------------------------

    def grant(self, secret: str) -> TokenRecord | None:
        """The token whose secret this is, if it exists (and is not revoked) on this node."""
        if not secret.startswith(_PREFIX):
            return None
        return self._by_digest.get(digest(secret))

    def get(self, name: str) -> TokenRecord | None:
        return self._by_name.get(name)

    def list(self) -> list[TokenRecord]:
        return sorted(self._by_name.values(), key=lambda t: (t.created_at, t.name))

    # ---- writers (event loop) -----------------------------------------------------------------

    async def create(self, name: str, role: Role) -> tuple[TokenRecord, str]:
        """Commits a new token; returns it with its secret (shown once, kept nowhere).

        Raises:
            ValueError: a bad name or a role that is not a client role.
            TokenNameTaken: the name is in use (here, or by a token created at the same time).
        """
        if problem := check_token_name(name):
            raise ValueError(problem)
        if role not in CLIENT_ROLES.values():
            raise ValueError(f"a client token's role is one of {', '.join(CLIENT_ROLES)}")
        if name in self._by_name:
            raise TokenNameTaken(name)
        secret = _PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(name, role, digest(secret), time.time())
        await self.driver.propose(encode_command(KIND, {"op": "put_token", "token": record.to_dict()}),
                                  uuid.uuid4().hex)
        if self._by_name.get(name) != record:
            raise TokenNameTaken(name)
        return record, secret

    async def revoke(self, name: str) -> TokenRecord | None:
        """Commits the revocation of ``name``; returns the token revoked, None if unknown."""
        token = self._by_name.get(name)
        if token is None:
            return None
        await self.driver.propose(encode_command(KIND, {"op": "revoke_token", "name": name}),
                                  uuid.uuid4().hex)
        return token
