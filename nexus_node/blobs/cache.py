"""Which blob copies a node drops when its blob store is over its size bound (pure).

Every blob a node holds is one of two things: a copy it *keeps for the cluster* (it is one of
the blob's rendezvous keepers, :func:`nexus_node.blobs.replication.keepers`: the copies that make
losing a node lose no data) or a *cached* copy it fetched to run a task or serve a model. Only
cached copies are dropped, least recently used first, and only when

* the blob has not been used on this node for ``min_idle`` seconds (a task about to read it
  would fetch it straight back), and
* every keeper already holds it (``keepers_holding >= wanted``: the cluster's replica count,
  or every member of a smaller cluster). Counting keepers, not any other holder, matters:
  two caching nodes dropping at once must not leave fewer copies than the cluster keeps.

So a node can stay over its bound: what it keeps for the cluster is never dropped to make room.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HeldBlob:
    sha256: str
    size: int
    last_used: float        # seconds since the epoch: the file's mtime, refreshed on each use
    kept: bool              # this node is one of the blob's keepers
    keepers_holding: int    # the blob's keepers recorded as holding it


def to_drop(held: list[HeldBlob], bound_bytes: int, now: float, wanted: int, min_idle: float = 60.0) -> list[str]:
    """The blobs to drop, in order, to bring ``held`` under ``bound_bytes`` (or as near as the
    rules allow)."""
    total = sum(b.size for b in held)
    if total <= bound_bytes:
        return []
    out = []
    for b in sorted(held, key=lambda b: (b.last_used, b.sha256)):
        if total <= bound_bytes:
            break
        if b.kept or now - b.last_used < min_idle or b.keepers_holding < max(1, wanted):
            continue
        out.append(b.sha256)
        total -= b.size
    return out
