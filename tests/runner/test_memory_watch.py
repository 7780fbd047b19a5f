"""The runner's memory watch (runner/main.py): it sees a task past its budget, and looks
less often while the task is far from it."""

from __future__ import annotations

import threading

import numpy as np

from nexus_node.runner.main import MemoryWatch, anon_rss


def test_a_task_past_its_budget_is_seen():
    seen = threading.Event()
    used: list[int] = []

    def exceeded(n: int) -> None:
        used.append(n)
        seen.set()

    with MemoryWatch(16, exceeded):
        block = np.ones(64 << 20, dtype=np.uint8)   # 64 MB, touched
        assert seen.wait(10), "the watch never saw 64 MB over a 16 MB budget"
    assert used[0] > 16 << 20 and block.sum() == 64 << 20


def test_the_anonymous_memory_read_counts_an_allocation():
    # 64 MB: past glibc's largest mmap threshold (32 MB), so a fresh mapping whose touched
    # pages all count; a 32 MB block could reuse heap memory freed earlier (and already
    # resident), as it did once in CI (+7 MB seen).
    before = anon_rss()
    block = np.ones(64 << 20, dtype=np.uint8)
    assert anon_rss() - before >= 62 << 20 and block[0] == 1


def test_far_from_the_budget_it_looks_less_often(monkeypatch):
    looks: list[float] = []
    watch = MemoryWatch(4096, lambda used: None)
    real_wait = watch._done.wait

    def recording_wait(timeout: float) -> bool:
        looks.append(timeout)
        return len(looks) > 3 or real_wait(0)

    monkeypatch.setattr(watch._done, "wait", recording_wait)
    watch._watch(anon_rss())
    # 4 GB of room at 2 GB/s: the longest interval after the first look.
    assert looks[0] == MemoryWatch.INTERVAL and looks[1:] == [MemoryWatch.MAX_INTERVAL] * 3
