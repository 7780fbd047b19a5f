"""Which blob files a node removes for good: those no live record needs (pure).

Every node collects its own store. A blob is *live* while a record needs it (the caller says
which: :func:`nexus_node.jobs.references.live_blobs`): a job's upload and prepared arrays, a
model's artifact, and every blob made for a job that still runs. Anything else is garbage: a
deleted job's data and models, an ended job's trial predictions and ensemble member files
(finalize was their only reader), an upload refused after it was stored, a file whose
placement was never recorded (a crash between the two), a copy whose drop was recorded but
never deleted.

A garbage file goes only once it has been unused for ``grace`` seconds (its mtime, which each
use refreshes: :meth:`nexus_node.blobs.replication.BlobSync.ensure`). That covers a blob
between its arrival and the record that references it: an upload stored a moment before its
job is committed, a task's output before its job records it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class StoredBlob:
    """A blob file in this node's store."""

    sha256: str
    size: int
    last_used: float   # seconds since the epoch: the file's mtime


@dataclass(frozen=True)
class Sweep:
    """What a pass of the collector removes now, and when the next garbage falls due."""

    remove: list[str]
    next_due: float | None   # seconds since the epoch; None: nothing is waiting out its grace


def sweep(stored: Iterable[StoredBlob], live: set[str], now: float, grace: float) -> Sweep:
    """The garbage among ``stored`` (not in ``live``) unused for ``grace`` seconds or more, oldest
    first, and when the first of the rest falls due."""
    remove: list[StoredBlob] = []
    due: list[float] = []
    for blob in stored:
        if blob.sha256 in live:
            continue
        if now - blob.last_used >= grace:
            remove.append(blob)
        else:
            due.append(blob.last_used + grace)
    remove.sort(key=lambda b: (b.last_used, b.sha256))
    return Sweep([b.sha256 for b in remove], min(due) if due else None)
