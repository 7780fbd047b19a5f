"""Roles and replicated tokens as pure logic: which role each call needs, and how every node
applies token commands (the same result everywhere, whatever order two creators raced in)."""

from __future__ import annotations

import types

import pytest

from nexus_node.cluster.tokens import KIND, ReplicatedTokens, TokenRecord, digest, validate_body
from nexus_node.consensus.raft import Entry
from nexus_node.consensus.state import ReplicatedState, encode_command
from nexus_node.net.roles import Role, check_token_name, parse_client_role, required_role


@pytest.mark.parametrize("method, role", [
    ("/grpc.health.v1.Health/Check", None),
    ("/nexus.v1.PeerService/StepStream", Role.PEER),
    ("/nexus.v1.RunnerService/FinishTrial", Role.PEER),
    ("/nexus.v1.NexusService/ListJobs", Role.READ),
    ("/nexus.v1.NexusService/Predict", Role.READ),
    ("/nexus.v1.NexusService/SubmitJob", Role.SUBMIT),
    ("/nexus.v1.NexusService/RevokeToken", Role.ADMIN),
    ("/nexus.v1.NexusService/SomethingNew", Role.ADMIN),   # closed until decided
    ("/optuna.StorageService/GetTrials", Role.READ),
    ("/optuna.StorageService/SetTrialStateValues", Role.SUBMIT),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", Role.READ),
    ("/optuna.StorageService/SetSomethingNew", Role.ADMIN),
    ("/nexus.v1.BlobService/Anything", Role.PEER),   # a service nobody classified: members only
])
def test_each_method_needs_its_role(method, role):
    assert required_role(method) == role


def test_roles_are_ordered_and_parsed():
    assert Role.READ < Role.SUBMIT < Role.ADMIN < Role.PEER
    assert parse_client_role(" Submit ") is Role.SUBMIT
    with pytest.raises(ValueError, match="read, submit, admin"):
        parse_client_role("peer")   # the peer secret is no client role
    assert check_token_name("ci.runner-2_x") is None
    assert "not allowed" in check_token_name("has space")
    assert check_token_name("x" * 65) is not None and check_token_name("") is not None


def _token(name="dash", role="read", sha=None, at=1.0):
    return {"name": name, "role": role, "sha256": sha or digest(name), "created_at": at}


@pytest.mark.parametrize("body, fragment", [
    ({"op": "put_token", "token": _token(at="yesterday")}, "created_at"),
    ({"op": "put_token", "token": _token(at=10 ** 400)}, "created_at"),
    ({"op": "put_token", "token": _token(at=float("nan"))}, "created_at"),
    ({"op": "put_token", "token": _token(role=["read"])}, "role"),
    ({"op": "put_token", "token": _token(role="peer")}, "role"),
    ({"op": "put_token", "token": _token(sha="ABC")}, "sha256"),
    ({"op": "put_token", "token": {**_token(), "secret": "leaked"}}, "an object of"),
    ({"op": "put_token", "token": _token(name="a b")}, "not allowed"),
    ({"op": "revoke_token", "name": 7}, "names a token"),
    ({"op": "grant_everything"}, "unknown tokens command"),
    ([], "an object"),
])
def test_malformed_token_commands_are_refused(body, fragment):
    with pytest.raises(ValueError, match=fragment):
        validate_body(body)


def _node() -> tuple[ReplicatedTokens, ReplicatedState]:
    state = ReplicatedState()
    return ReplicatedTokens(types.SimpleNamespace(state=state)), state


def _apply(state: ReplicatedState, *bodies) -> None:
    for body in bodies:
        state.apply(Entry(state.applied_index + 1, 1, data=encode_command(KIND, body),
                          proposal_id=f"p{state.applied_index}"))


def test_every_node_keeps_the_first_token_of_a_name_and_forgets_a_revoked_one():
    first, second = _token("dash", "read", digest("nxt_one")), _token("dash", "admin", digest("nxt_two"))
    nodes = [_node() for _ in range(2)]
    for tokens, state in nodes:
        _apply(state, {"op": "put_token", "token": first}, {"op": "put_token", "token": second},
               {"op": "revoke_token", "name": "never-was"})
        assert tokens.grant("nxt_one") == TokenRecord.from_dict(first)
        assert tokens.grant("nxt_two") is None          # the name was taken: no admin token
        assert tokens.grant(first["sha256"]) is None    # the digest is not a credential
        assert [t.name for t in tokens.list()] == ["dash"]
        _apply(state, {"op": "revoke_token", "name": "dash"})
        assert tokens.grant("nxt_one") is None and tokens.list() == []
