"""What a node checks of its data dir before it serves: an intact Raft log, and an identity that
matches it.

A node's identity is its id (``node_id``) together with its Raft log (``raft.db``): the log holds
the terms it saw and the votes it cast. An id without its log is the dangerous combination. Such
a node would found a new cluster under an old name, or, in a running cluster, come back as a
voter that forgot its votes, so that two leaders could be elected in one term (Raft §5.2).
That is why :func:`check_data_dir` refuses:

* a damaged log (:class:`~nexus_node.consensus.log_store.LogDamaged`: SQLite's ``quick_check``
  fails, or what the file holds is not a log this node could have written);
* a data dir with an id or blobs but no log (``raft.db`` missing or empty);
* a log without an id.

``--new-identity`` is the way out that has to be asked for: the old state (``node_id``,
``raft.db``, its ``snapshots/`` and ``studies.db``, ``blobs/``) goes into ``retired-<old id>-<time>/`` in the data
dir, and the node starts empty under a new id. It joins its cluster again as a new member (or founds a new one).
It does nothing to a healthy data dir, so leaving it in a service file is harmless.

A brand-new node's id stays in ``node_id.new`` until the node has a log (it founded or joined a
cluster: :func:`adopt_identity`), so a node stopped before that (a busy port, a join window cut
short) starts again under the same id and is not refused.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
import uuid
from pathlib import Path

from nexus_node.consensus.log_store import SNAPSHOT_DIR, LogDamaged, LogFile, inspect
from nexus_node.consensus.snapshot_file import fsync_dir

log = logging.getLogger(__name__)

LOG_FILE = "raft.db"
ID_FILE = "node_id"
NEW_ID_FILE = "node_id.new"
BLOBS = "blobs"
_LOG_FILES = (LOG_FILE, LOG_FILE + "-wal", LOG_FILE + "-shm")
#: The study tables (study/study_db.py): the log's applied journal, kept and retired with it.
STUDIES_FILE = "studies.db"
STUDY_FILES = (STUDIES_FILE, STUDIES_FILE + "-wal", STUDIES_FILE + "-shm")
_NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class StartRefused(Exception):
    """The node must not serve this data dir as it is. ``str()`` is one line: what is wrong and
    what to do about it."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who the node is, as :func:`check_data_dir` found or made it.

    Attributes:
        node_id: The id to run under.
        has_log: Whether the data dir holds a Raft log (False: found or join a cluster).
        retired: Where ``--new-identity`` moved the old state, if it did.
    """

    node_id: str
    has_log: bool
    retired: Path | None = None


def damaged_advice(exc: LogDamaged) -> str:
    """The one-line message for a damaged log: what is wrong and the two ways on."""
    return (f"{exc}. Restore {exc.path.name} and {SNAPSHOT_DIR}/ from a backup (with the node stopped), "
            f"or start the node with --new-identity: it sets this node's state aside in its data dir and "
            f"joins the cluster again as a new, empty node (a cluster of one then starts over empty)")


async def check_data_dir(data_dir: Path, new_identity: bool = False) -> Identity:
    """Checks the data dir's log and identity; with ``new_identity``, starts afresh where the
    node would otherwise be refused. The caller holds the data dir's lock.

    Args:
        data_dir: The node's data dir (it exists).
        new_identity: ``--new-identity``: set a damaged or orphaned state aside and draw a new id.

    Returns:
        The identity to run under.

    Raises:
        StartRefused: the data dir cannot be served as it is (the message says why and what to do).
    """
    log_path = data_dir / LOG_FILE
    id_file = data_dir / ID_FILE
    try:
        kind = await inspect(log_path)
    except LogDamaged as exc:
        if not new_identity:
            raise StartRefused(damaged_advice(exc)) from None
        return _afresh(data_dir, f"its log is damaged ({exc.problem})")
    old_id = _read_id(id_file)
    if kind is LogFile.HELD:
        if old_id is None and (data_dir / NEW_ID_FILE).is_file():
            # It wrote its first entries and stopped before adopting its id: adopt it now.
            old_id = adopt_identity(data_dir)
        if old_id is not None:
            if new_identity:
                log.warning("--new-identity: %s holds %s's intact log; the node keeps its identity "
                            "(the flag only acts on a damaged or orphaned data dir)", data_dir, old_id)
            return Identity(old_id, True)
        if not new_identity:
            raise StartRefused(
                f"{data_dir} holds a Raft log but no node id ({id_file} is missing or unreadable): restore "
                f"{ID_FILE} from a backup, or start with --new-identity to set this state aside and join "
                f"the cluster again as a new, empty node")
        return _afresh(data_dir, "it holds a log but no node id")
    blobs = _blob_count(data_dir / BLOBS)
    if old_id is not None or blobs:
        what = " and ".join(x for x in (f"node {old_id}'s id" if old_id else "",
                                        f"{blobs} blobs" if blobs else "") if x)
        if not new_identity:
            state = "missing" if kind is LogFile.MISSING else "empty"
            raise StartRefused(
                f"{data_dir} holds {what} but no Raft log ({log_path} is {state}): started like this the "
                f"node would come back with no memory of its cluster, its votes or its jobs. Restore "
                f"{LOG_FILE} from a backup, or start with --new-identity to set the old state aside and "
                f"join the cluster again as a new, empty node")
        return _afresh(data_dir, f"it holds {what} but no log")
    return Identity(_pending_id(data_dir), False)


def adopt_identity(data_dir: Path) -> str:
    """Makes the pending id (``node_id.new``) the node's id, once its log holds entries (it
    founded or joined a cluster). Returns the id; does nothing if it was adopted already."""
    id_file, pending = data_dir / ID_FILE, data_dir / NEW_ID_FILE
    if pending.is_file():
        os.replace(pending, id_file)
        fsync_dir(data_dir)
    node_id = _read_id(id_file)
    if node_id is None:
        raise StartRefused(f"{id_file} is unreadable")
    return node_id


def _afresh(data_dir: Path, why: str) -> Identity:
    """``--new-identity``: moves the old state aside, draws a new id."""
    old_id = _read_id(data_dir / ID_FILE) or "unknown"
    retired = data_dir / f"retired-{old_id}-{time.strftime('%Y%m%dT%H%M%S')}"
    retired.mkdir()
    for name in (*_LOG_FILES, *STUDY_FILES, SNAPSHOT_DIR, ID_FILE, NEW_ID_FILE, BLOBS):
        if (data_dir / name).exists():
            os.replace(data_dir / name, retired / name)
    fsync_dir(data_dir)
    node_id = _pending_id(data_dir)
    log.warning("--new-identity: %s %s; its old state is in %s (delete it once it is no longer "
                "needed); this node starts empty as %s", data_dir, why, retired, node_id)
    return Identity(node_id, False, retired)


def _pending_id(data_dir: Path) -> str:
    """The id of a node with no log yet: the one drawn before, if it never got further."""
    pending = data_dir / NEW_ID_FILE
    node_id = _read_id(pending)
    if node_id is None:
        node_id = "node-" + uuid.uuid4().hex[:8]
        tmp = pending.with_suffix(".tmp")
        tmp.write_text(node_id + "\n")
        os.replace(tmp, pending)
    return node_id


def _read_id(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None
    return text if _NODE_ID.match(text) else None


def _blob_count(root: Path) -> int:
    """Blobs held (``<root>/<2 hex>/<sha256>``; the store's ``tmp/`` holds none)."""
    if not root.is_dir():
        return 0
    return sum(1 for d in root.iterdir() if d.is_dir() and len(d.name) == 2 for f in d.iterdir() if f.is_file())
