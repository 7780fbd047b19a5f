"""Snapshot files (nexus_node/consensus/snapshot_file.py): written atomically as JSON lines, read
back item for item, and refused with a clear message when damaged or truncated."""

from __future__ import annotations

import hashlib
import json
import math
import tracemalloc
from typing import Any, Callable, Iterator

import pytest

from nexus_node.consensus.raft import SnapshotMeta
from nexus_node.consensus.snapshot_file import (
    SnapshotDamaged,
    file_digest,
    read_snapshot,
    verify_snapshot,
    write_snapshot,
)

META = SnapshotMeta(41, 3, '{"voters":["a","b","c"],"learners":["d"]}')
ITEMS: list[tuple[str, Any]] = [
    ("state", {"applied_index": 41, "seen": [["p1", 40], ["p2", 41]]}),
    ("journal", {"op_code": 4, "worker_id": "w-1", "study_id": 0, "params": {"lr": 0.001, "layers": 3},
                 "user_attrs": {"note": "line one\nline two", "name": "Zoë ☃"}}),
    ("journal", {"values": [1.5e-300, -0.0, 12345678901234567890], "intermediate": {"3": None}}),
    ("jobs", ["a list", True, False, None, {}]),
]


def test_items_come_back_as_written_with_the_header_and_the_file_digest(tmp_path):
    written = write_snapshot(tmp_path, META, iter(ITEMS))
    assert written.path == tmp_path / "snap-41-3.jsonl"
    assert [p.name for p in tmp_path.iterdir()] == ["snap-41-3.jsonl"]   # no temporary file left
    meta, items = read_snapshot(written.path)
    assert meta == META
    assert list(items) == ITEMS
    assert (written.size, written.sha256) == file_digest(written.path)
    assert (written.size, written.sha256) == (len(written.path.read_bytes()),
                                              hashlib.sha256(written.path.read_bytes()).hexdigest())
    assert verify_snapshot(written.path) == written
    # Plain JSON lines, one per item, between the header and the end line: never a pickle.
    lines = [json.loads(line) for line in written.path.read_text().splitlines()]
    assert lines[0] == {"nexus_snapshot": 1, "index": 41, "term": 3, "config": META.config}
    assert lines[-1]["end"] == len(ITEMS)


def test_not_a_number_and_infinities_round_trip_as_optunas_journal_writes_them(tmp_path):
    written = write_snapshot(tmp_path, META, [("journal", {"intermediate": [math.nan, math.inf, -math.inf]})])
    ((_, item),) = list(read_snapshot(written.path)[1])
    nan, inf, minus_inf = item["intermediate"]
    assert math.isnan(nan) and inf == math.inf and minus_inf == -math.inf


def _flip_a_digit(data: bytes) -> bytes:
    """Still valid JSON on every line: only the checksum can tell."""
    at = data.index(b"12345678901234567890")
    return data[:at] + b"2" + data[at + 1:]


def _replace_line(number: int, text: bytes) -> Callable[[bytes], bytes]:
    def damage(data: bytes) -> bytes:
        lines = data.splitlines(keepends=True)
        lines[number] = text
        return b"".join(lines)
    return damage


def _recount(count: int) -> Callable[[bytes], bytes]:
    """An end line that counts wrong but whose checksum is right."""
    def damage(data: bytes) -> bytes:
        lines = data.splitlines(keepends=True)
        body = b"".join(lines[:-1])
        end = json.dumps({"end": count, "sha256": hashlib.sha256(body).hexdigest()}).encode() + b"\n"
        return body + end
    return damage


DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "a digit changed": (_flip_a_digit, "does not match the checksum"),
    "a byte flipped into broken JSON": (lambda d: d.replace(b'"jobs"', b'"jobs\x00', 1), "line 5 is not JSON"),
    "cut in the middle of a line": (lambda d: d[:len(d) // 2], "cut short"),
    "cut before its end line": (lambda d: b"".join(d.splitlines(keepends=True)[:-1]),
                                "without its end line"),
    "an end line that counts wrong": (_recount(7), "counts 7 items, but 4 precede it"),
    "a line that is not an item": (_replace_line(2, b'{"kind": "journal"}\n'), "line 3 is not an item"),
    "data after the end line": (lambda d: d + b'{"k":"jobs","v":1}\n', "data after its end line"),
    "a header of a later format": (_replace_line(0, b'{"nexus_snapshot":2,"index":41,"term":3,"config":""}\n'),
                                   "format 2; this node reads format 1"),
    "a header that is not one": (_replace_line(0, b'{"k":"state","v":{}}\n'), "line 1 is not a snapshot header"),
    "an empty file": (lambda d: b"", "it is empty"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_or_truncated_file_is_refused_naming_the_file_and_the_problem(tmp_path, kind):
    damage, problem = DAMAGE[kind]
    written = write_snapshot(tmp_path, META, ITEMS)
    written.path.write_bytes(damage(written.path.read_bytes()))
    with pytest.raises(SnapshotDamaged, match=problem) as caught:
        verify_snapshot(written.path)
    assert str(written.path) in str(caught.value)
    with pytest.raises(SnapshotDamaged, match=problem):   # the streaming reader refuses it too
        meta, items = read_snapshot(written.path)
        list(items)


def test_the_streaming_reader_can_only_refuse_a_wrong_checksum_at_the_end(tmp_path):
    # Why a caller consumes every item before it trusts what it built (or verifies first).
    written = write_snapshot(tmp_path, META, ITEMS)
    written.path.write_bytes(_flip_a_digit(written.path.read_bytes()))
    _, items = read_snapshot(written.path)
    got = [next(items) for _ in ITEMS]
    assert got[2][1]["values"][2] == 22345678901234567890
    with pytest.raises(SnapshotDamaged, match="checksum"):
        next(items)


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    def items() -> Iterator[tuple[str, Any]]:
        yield "state", {"applied_index": 41}
        raise ValueError("the state machine could not capture its jobs")

    with pytest.raises(ValueError, match="could not capture"):
        write_snapshot(tmp_path, META, items())
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_snapshot(tmp_path, META, [("state", {"applied_index": 41}), ("jobs", {1, 2})])
    assert list(tmp_path.iterdir()) == []


def test_a_recorded_snapshot_is_never_replaced(tmp_path):
    first = write_snapshot(tmp_path, META, ITEMS)
    with pytest.raises(FileExistsError, match="index 41, term 3 exists already"):
        write_snapshot(tmp_path, META, ITEMS[:1])
    assert verify_snapshot(first.path) == first


def test_writing_and_verifying_take_one_line_of_memory_not_the_whole_file(tmp_path):
    trial = {"params": {f"p{i}": i / 7 for i in range(20)}, "values": [0.5], "note": "x" * 200}
    n = 10_000   # about 6 MB of snapshot

    def items() -> Iterator[tuple[str, Any]]:
        yield "state", {"applied_index": 41}
        for number in range(n):
            yield "journal", {"number": number, **trial}

    tracemalloc.start()
    try:
        written = write_snapshot(tmp_path, META, items())
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert verify_snapshot(written.path) == written
        _, verify_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written.size > 5 << 20
    assert write_peak < 1 << 20 and verify_peak < 1 << 20, (write_peak, verify_peak)
