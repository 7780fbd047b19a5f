"""What a node says about the cluster (``nexus cluster``, the dashboard): plain data.

The node fills these in (``node/node.py``); :mod:`nexus_node.api.convert` turns them into the
``nexus.v1`` messages at the edge. A member's own figures (slots, memory, what it runs) come
from the member itself, over ``PeerService.Describe``.
"""

from __future__ import annotations

import dataclasses

#: A member's role: the coordinator (the Raft leader), a voter, or a non-voting member.
COORDINATOR, VOTER, NON_VOTER = "COORDINATOR", "VOTER", "NON_VOTER"


@dataclasses.dataclass
class MemberInfo:
    node_id: str
    address: str
    role: str = ""                  # one of the roles above; "" until the asker fills it in
    term: int = 0
    last_contact: float = 0.0       # unix seconds
    slots_total: int = 0
    slots_busy: int = 0
    memory_total_bytes: int = 0
    memory_free_bytes: int = 0
    accelerator: str = ""           # "cpu" or the CUDA device name
    running: list[str] = dataclasses.field(default_factory=list)   # "job/trial" labels
    version: str = ""
    disk_free_bytes: int = 0
    disk_low: bool = False          # under --min-free-mb: uploads are refused
    blob_count: int = 0             # the node's blob store at its collector's last pass
    blob_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class FoundPeer:
    """A node found (mDNS or ``--seeds``) that is not a member."""

    node_id: str       # empty for a seed not identified yet
    address: str
    source: str        # "mdns" or "seed"
    last_seen: float   # unix seconds


@dataclasses.dataclass
class ClusterView:
    cluster_name: str
    coordinator_id: str
    term: int
    nodes: list[MemberInfo]
    discovered: list[FoundPeer]
