"""Snapshot files: the replicated state at one log index, as JSON lines on disk.

A snapshot is data, never a pickle: it crosses the network and may be read by another version
of the code. The file is one JSON document per line::

    {"nexus_snapshot": 1, "index": I, "term": T, "config": "<membership JSON text>"}
    {"k": "<kind>", "v": <item>}            one line per item; the first is the "state" item
    ...
    {"end": <number of item lines>, "sha256": "<hex SHA-256 of every byte before this line>"}

The items are the state machine's (:meth:`ReplicatedState.capture
<nexus_node.consensus.state.ReplicatedState.capture>`); this module only moves them. The end line
tells a complete file from a truncated one and a sound one from a damaged one. Floats are
written as Python's :mod:`json` writes them (``NaN`` and ``Infinity`` included, as Optuna's own
journal does), and read back the same way.

Everything here is blocking file I/O with bounded memory (one line at a time): call it from a
thread (``asyncio.to_thread``), never on an event loop.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from nexus_node.consensus.raft.messages import MAX_INDEX, MAX_TERM, SnapshotMeta

#: The format version this code writes and reads (the header's ``nexus_snapshot``).
FORMAT = 1
_NAME = re.compile(r"^snap-(\d{1,19})-(\d{1,19})\.jsonl$")
_BLOCK = 1 << 20


class SnapshotDamaged(ValueError):
    """A snapshot file cannot be trusted: a bad header or line, a wrong count or checksum, a
    truncated file. ``str()`` names the file and the problem."""


class SnapshotNotWritten(OSError):
    """Writing a snapshot failed (the disk is full, ...). Nothing was left behind; ``errno`` is
    the cause's and ``str()`` says what happened and what was kept."""


@dataclasses.dataclass(frozen=True)
class SnapshotFile:
    """A complete snapshot file.

    Attributes:
        path: Where it is (``snap-<index>-<term>.jsonl``).
        meta: What it stands for (its header).
        size: Its length in bytes.
        sha256: The SHA-256 of the whole file (hex): what a transfer is checked against.
    """

    path: Path
    meta: SnapshotMeta
    size: int
    sha256: str


def snapshot_name(index: int, term: int) -> str:
    """The file name of the snapshot at ``(index, term)``."""
    return f"snap-{index}-{term}.jsonl"


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode("ascii") + b"\n"


def write_snapshot(directory: Path, meta: SnapshotMeta, items: Iterable[tuple[str, Any]]) -> SnapshotFile:
    """Writes a snapshot atomically: line by line into a temporary file in ``directory``, then
    fsync, rename to ``snap-<index>-<term>.jsonl`` and fsync of the directory. A crash at any
    point leaves either no such file or the whole of it (and maybe a temporary file, which the
    log store removes when it opens).

    Args:
        directory: The log store's snapshot folder (it exists).
        meta: What the snapshot stands for.
        items: ``(kind, item)`` pairs, item JSON-able; consumed once, one at a time.

    Returns:
        The file, with its size and the SHA-256 of its bytes.

    Raises:
        SnapshotNotWritten: the disk refused (full, read-only...); the temporary file is gone
            and nothing else changed.
        FileExistsError: a snapshot at that index and term exists already (it is never
            replaced: the log store records its size and checksum).
        TypeError, ValueError: an item cannot be written as JSON (raised by ``items`` or
            :mod:`json`); nothing is left behind either.
    """
    final = directory / snapshot_name(meta.index, meta.term)
    if final.exists():
        raise FileExistsError(errno.EEXIST, f"a snapshot at index {meta.index}, term {meta.term} exists already",
                              str(final))
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{final.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        body = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            header = _line({"nexus_snapshot": FORMAT, "index": meta.index, "term": meta.term,
                            "config": meta.config})
            f.write(header)
            body.update(header)
            size, count = len(header), 0
            for kind, item in items:
                line = _line({"k": kind, "v": item})
                f.write(line)
                body.update(line)
                size += len(line)
                count += 1
            end = _line({"end": count, "sha256": body.hexdigest()})
            f.write(end)
            f.flush()
            os.fsync(f.fileno())
        whole = body.copy()
        whole.update(end)
        os.replace(tmp, final)
        tmp = final   # from here on, a failure takes back the renamed file
        fsync_dir(directory)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            failed = SnapshotNotWritten(
                f"writing the snapshot at index {meta.index} failed: {exc.strerror or exc}; "
                f"the previous snapshot and the log are kept")
            failed.errno = exc.errno
            raise failed from exc
        raise
    return SnapshotFile(final, meta, size + len(end), whole.hexdigest())


def read_snapshot(path: Path, skip: frozenset[str] = frozenset()) -> tuple[SnapshotMeta, Iterator[tuple[str, Any]]]:
    """Opens a snapshot and streams its items, one line at a time; the items of the kinds in
    ``skip`` are checked against the checksum but neither parsed nor yielded (a restarted node
    whose study tables are newer than its snapshot reads none of their items).

    The end line's count and checksum can only be checked once every item was read: the
    iterator raises :class:`SnapshotDamaged` at its end if they do not match. A caller must
    consume it fully before it trusts the state it built from the items (restoring all or
    nothing), or check the file first with :func:`verify_snapshot`.

    Returns:
        The header, and an iterator of ``(kind, item)`` pairs that closes the file when it
        ends (or is closed).

    Raises:
        SnapshotDamaged: the header is not a snapshot header; the iterator raises it for a bad
            line, a missing or wrong end line, or data after it.
        OSError: the file cannot be read.
    """
    f = open(path, "rb")
    try:
        meta, header = _read_header(f, path)
    except BaseException:
        f.close()
        raise
    return meta, _items(f, path, _Digests(header), skip)


def verify_snapshot(path: Path) -> SnapshotFile:
    """Reads a whole snapshot file (streaming, bounded memory) and checks every line, the count
    and the checksum.

    Returns:
        The file, with its size and the SHA-256 of all of it.

    Raises:
        SnapshotDamaged: anything :func:`read_snapshot` refuses; the message names the file.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        meta, header = _read_header(f, path)
        digests = _Digests(header)
        for _ in _items(f, path, digests):
            pass
    return SnapshotFile(path, meta, digests.size, digests.whole.hexdigest())


def file_digest(path: Path) -> tuple[int, str]:
    """The size of the file at ``path`` and its SHA-256 (hex), read in blocks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def remove_snapshots_before(directory: Path, index: int) -> list[Path]:
    """Removes the complete snapshot files in ``directory`` older than ``index``; returns them.
    Temporary and partial files (a transfer in progress) are left alone."""
    removed = []
    for path in directory.iterdir():
        found = _NAME.match(path.name)
        if found and int(found.group(1)) < index:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def remove_all_but(directory: Path, keep: str | None) -> list[Path]:
    """Removes every file in ``directory`` but the one named ``keep``; returns them. For a store
    that opens: what a crash left (a temporary file, a snapshot never recorded, a partial
    transfer) is not state."""
    removed = []
    for path in directory.iterdir():
        if path.name != keep and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class _Digests:
    """The SHA-256 of the lines before the end line (the end line's checksum) and of the whole
    file (the transfer's), with its size, updated as the lines are read."""

    def __init__(self, header: bytes) -> None:
        self.body = hashlib.sha256(header)
        self.whole = self.body.copy()
        self.size = len(header)

    def body_line(self, line: bytes) -> None:
        self.body.update(line)
        self.whole.update(line)
        self.size += len(line)

    def end_line(self, line: bytes) -> None:
        self.whole.update(line)
        self.size += len(line)


def _damaged(path: Path, problem: str) -> SnapshotDamaged:
    return SnapshotDamaged(f"snapshot {path} is damaged: {problem}")


def _parse(line: bytes, path: Path, number: int) -> dict[str, Any]:
    if not line.endswith(b"\n"):
        raise _damaged(path, f"line {number} is cut short (the file is truncated)")
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise _damaged(path, f"line {number} is not JSON ({str(exc)[:120]})") from None
    if not isinstance(record, dict):
        raise _damaged(path, f"line {number} is not a JSON object")
    return record


def _whole(value: object, limit: int) -> bool:
    return type(value) is int and 0 <= value < limit


def _read_header(f: IO[bytes], path: Path) -> tuple[SnapshotMeta, bytes]:
    """The header and its line (the end line's checksum covers it)."""
    line = f.readline()
    if not line:
        raise _damaged(path, "it is empty")
    header = _parse(line, path, 1)
    if set(header) != {"nexus_snapshot", "index", "term", "config"}:
        raise _damaged(path, f"line 1 is not a snapshot header (keys: {', '.join(sorted(header))[:120]})")
    if header["nexus_snapshot"] != FORMAT or type(header["nexus_snapshot"]) is not int:
        raise _damaged(path, f"it is in format {header['nexus_snapshot']!r:.20}; this node reads format {FORMAT}")
    index, term, config = header["index"], header["term"], header["config"]
    if not _whole(index, MAX_INDEX) or not _whole(term, MAX_TERM) or not isinstance(config, str):
        raise _damaged(path, f"its header's index {index!r:.30}, term {term!r:.30} or config is out of range")
    return SnapshotMeta(index, term, config), line


def _items(f: IO[bytes], path: Path, digests: _Digests,
           skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, Any]]:
    # _line writes an item as {"k":KIND,"v":...}: a skipped kind is told by its first bytes.
    skipped = tuple(b'{"k":' + json.dumps(kind).encode("ascii") + b',"v":' for kind in skip)
    with f:
        count = 0
        for number, line in enumerate(f, start=2):
            if skipped and line.startswith(skipped) and line.endswith(b"}\n"):
                digests.body_line(line)
                count += 1
                continue
            record = _parse(line, path, number)
            if "end" in record:
                if set(record) != {"end", "sha256"}:
                    raise _damaged(path, f"its end line (line {number}) is malformed")
                if record["end"] != count or type(record["end"]) is not int:
                    raise _damaged(path, f"its end line counts {record['end']!r:.30} items, but {count} "
                                         f"precede it")
                if record["sha256"] != digests.body.hexdigest():
                    raise _damaged(path, "its content does not match the checksum on its end line")
                digests.end_line(line)
                if f.read(1):
                    raise _damaged(path, f"it holds data after its end line (line {number})")
                return
            if set(record) != {"k", "v"} or not isinstance(record["k"], str):
                raise _damaged(path, f'line {number} is not an item {{"k": kind, "v": item}}')
            digests.body_line(line)
            count += 1
            yield record["k"], record["v"]
        raise _damaged(path, f"it ends after {count} items without its end line (the file is truncated)")


def fsync_dir(path: Path) -> None:
    """Makes the entries of the folder at ``path`` durable (a rename or a new file in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
