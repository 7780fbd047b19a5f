"""Free space in the data dir: uploads are refused before the disk is full, not after.

A node whose data dir fills up cannot write its Raft log, and a node that cannot write its log
must stop (a write the core counted but the disk lost could be a vote a restart forgets). So
the node keeps a margin: below ``--min-free-mb`` it refuses new uploads (a job's CSV, a
prediction input) with RESOURCE_EXHAUSTED before storing a byte, and says so in
``nexus cluster``. The jobs it runs carry on; if their writes fill the disk anyway, the node
exits with the reason and starts again once space is back (docs/architecture.md, Restart).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from nexus_node.errors import TooLarge

#: The default margin, in MiB: room for a few hundred thousand log entries and some blobs
#: after the refusals start, yet small against today's disks.
DEFAULT_MIN_FREE_MB = 256


class DiskLow(TooLarge):
    """The data dir's filesystem is below the free-space margin (RESOURCE_EXHAUSTED)."""


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write on ``path``'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskGuard:
    """Checks the data dir's free space against the margin.

    Args:
        data_dir: The node's data dir.
        min_free_bytes: The margin; 0 turns the check off.
    """

    def __init__(self, data_dir: Path, min_free_bytes: int) -> None:
        self.data_dir, self.min_free_bytes = data_dir, min_free_bytes

    def free(self) -> int:
        """Free bytes now (one ``statvfs``: cheap enough per call)."""
        return free_bytes(self.data_dir)

    def low(self, free: int | None = None) -> bool:
        """Whether the free space is below the margin."""
        return self.min_free_bytes > 0 and (self.free() if free is None else free) < self.min_free_bytes

    def room_for(self, what: str) -> Callable[[int], None]:
        """A check of sizes against the room there is now: it raises :class:`DiskLow` for a
        ``what`` of ``size`` bytes that would take the data dir below the margin, saying how
        much room it needs. The room is read once: what the upload itself writes meanwhile is
        not counted against it twice."""
        free = self.free()

        def check(size: int) -> None:
            if size > free - self.min_free_bytes:
                raise DiskLow(
                    f"the {what} of {size / 2**20:.1f} MiB does not fit: this node's data dir {self.data_dir} "
                    f"has {free / 2**20:.1f} MiB free and keeps {self.min_free_bytes >> 20} MiB of it free "
                    f"(--min-free-mb), so it needs {(size - free + self.min_free_bytes) / 2**20:.1f} MiB more; "
                    f"free some space there or send it to a node with more room")
        return check

    def check(self, what: str) -> None:
        """Raises :class:`DiskLow` when below the margin, naming the data dir and its free space.

        Args:
            what: What is refused ("upload", "prediction input").
        """
        free = self.free()
        if self.low(free):
            raise DiskLow(
                f"this node's data dir {self.data_dir} has {free / 2**20:.1f} MiB free, under its "
                f"--min-free-mb of {self.min_free_bytes >> 20} MiB: the {what} is refused; free some "
                f"space there (or send it to another node)")
