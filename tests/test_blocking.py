"""The blocking-call fixture catches file work on the event loop, and only there."""

from __future__ import annotations

import asyncio

import pytest

from nexus_node.blobs import files
from tests.blocking import BlockingOnLoop, armed


async def test_an_open_on_the_loop_is_caught_even_when_the_caller_swallows_it(tmp_path):
    path = tmp_path / "f.txt"
    with armed() as found:
        try:
            open(path, "w").close()   # what a servicer must not do
        except BlockingOnLoop:
            pass   # code under test that swallows errors still fails the test at teardown
        with pytest.raises(BlockingOnLoop, match="run it in a thread"):
            path.unlink(missing_ok=True)
    assert len(found) == 2 and found[0].startswith("open(") and "test_blocking.py" in found[0]


async def test_the_same_work_in_a_thread_passes(tmp_path):
    path = tmp_path / "f.txt"
    with armed() as found:
        async with files.Writer(path) as w:
            await w.write(b"x" * 10)
        assert [c async for c in files.read_chunks(path, 4)] == [b"xxxx", b"xxxx", b"xx"]
        await files.remove(path)
        await asyncio.to_thread(lambda: open(tmp_path / "g", "w").close())
    assert found == [] and not path.exists()


def test_code_outside_an_event_loop_is_not_checked(tmp_path):
    with armed() as found:
        open(tmp_path / "f.txt", "w").close()
    assert found == []
