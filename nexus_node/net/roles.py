"""Who may call what: the roles of client tokens, the peer secret, and each RPC's minimum role.

Pure: no gRPC, no I/O. The interceptor (:mod:`nexus_node.net.auth`) asks :func:`required_role` for a
call's method and compares it with the caller's credential.

Two kinds of credential (DESIGN.md, "Two kinds of credential"):

* the cluster's **peer secret** admits members to ``PeerService`` and the node's runners to
  ``RunnerService``; it also grants everything a client can do, so a node given only
  ``--token-file`` (where that file is both) keeps working;
* **client tokens** carry a role (``read`` < ``submit`` < ``admin``) and never reach
  ``PeerService`` or ``RunnerService``.
"""

from __future__ import annotations

import enum
import re


class Role(enum.IntEnum):
    """Ordered: a credential of a role may do everything the roles below it may."""

    READ = 1
    SUBMIT = 2
    ADMIN = 3
    PEER = 4   # the peer secret: cluster members and the node's own runners


#: What ``nexus token create --role`` accepts (the peer secret is not a client role).
CLIENT_ROLES = {"read": Role.READ, "submit": Role.SUBMIT, "admin": Role.ADMIN}

_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_PEER_PREFIXES = ("/nexus.v1.PeerService/", "/nexus.v1.RunnerService/")

_NEXUS = "/nexus.v1.NexusService/"
_NEXUS_ROLES = {
    **dict.fromkeys(("GetJob", "ListJobs", "WatchJob", "ListTrials", "ListModels", "GetModel",
                     "Predict", "ExportModel", "GetCluster", "WatchCluster"), Role.READ),
    # Deleting is the submit role's, as cancelling is: whoever may start and stop jobs may
    # clear them away (Optuna's DeleteStudy is a submit write too).
    **dict.fromkeys(("SubmitJob", "CancelJob", "DeleteJob", "DeleteModel"), Role.SUBMIT),
    **dict.fromkeys(("CreateToken", "ListTokens", "RevokeToken"), Role.ADMIN),
}

_OPTUNA = "/optuna.StorageService/"
# Named one by one, so that a method a later Optuna adds is closed until someone decides.
_OPTUNA_READS = frozenset({
    "GetStudyIdFromName", "GetStudyNameFromId", "GetStudyDirections", "GetStudyUserAttributes",
    "GetStudySystemAttributes", "GetAllStudies", "GetTrialIdFromStudyIdTrialNumber", "GetTrial",
    "GetTrials"})
# Writes a submit token may make, to studies of its own (jobs' studies are the runners': see
# storage_service.job_study_written).
_OPTUNA_WRITES = frozenset({
    "CreateNewStudy", "DeleteStudy", "SetStudyUserAttribute", "SetStudySystemAttribute",
    "CreateNewTrial", "SetTrialParameter", "SetTrialStateValues", "SetTrialIntermediateValue",
    "SetTrialUserAttribute", "SetTrialSystemAttribute"})
_REFLECTION_PREFIXES = ("/grpc.reflection.",)


def required_role(method: str) -> Role | None:
    """The least role that may call ``method`` (a gRPC path, ``/package.Service/Method``).

    Returns:
        None for calls open to anyone (health checks, which load balancers make without a
        token). A method this table does not know is closed until someone decides
        otherwise: a new NexusService or Optuna method needs the admin role, a service this
        table does not know at all the peer secret (an internal service added later is never
        a client's).
    """
    if method.startswith(_OPEN_PREFIXES):
        return None
    if method.startswith(_PEER_PREFIXES):
        return Role.PEER
    if method.startswith(_NEXUS):
        return _NEXUS_ROLES.get(method[len(_NEXUS):], Role.ADMIN)
    if method.startswith(_OPTUNA):
        name = method[len(_OPTUNA):]
        return Role.READ if name in _OPTUNA_READS else Role.SUBMIT if name in _OPTUNA_WRITES else Role.ADMIN
    if method.startswith(_REFLECTION_PREFIXES):
        return Role.READ
    return Role.PEER


def role_name(role: Role) -> str:
    return "peer secret" if role is Role.PEER else role.name.lower()


_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_token_name(name: str) -> str | None:
    """What is wrong with ``name`` as a token's name, or None."""
    if not _NAME.fullmatch(name):
        return (f"token name {name[:80]!r} is not allowed: use 1 to 64 letters, digits, '.', '_' "
                f"or '-'")
    return None


def parse_client_role(name: str) -> Role:
    """``read``, ``submit`` or ``admin`` (any case).

    Raises:
        ValueError: another name, with the ones allowed.
    """
    role = CLIENT_ROLES.get(name.strip().lower())
    if role is None:
        raise ValueError(f"unknown role {name!r}: use one of {', '.join(CLIENT_ROLES)}")
    return role
