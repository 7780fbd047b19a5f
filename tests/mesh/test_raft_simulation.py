"""The seeded simulation of the Raft core (issue 3's required test); see ``sim.py``.

``NEXUS_RAFT_SEEDS=N`` runs seeds ``0..N-1`` (default 2000); ``NEXUS_RAFT_SEED=S`` runs seed S
alone, which is how a failure printed by CI is replayed. Seeds are spread over up to
``NEXUS_RAFT_WORKERS`` processes (default: the CPU count, at most 4); each seed is
deterministic whichever process runs it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import time

from .sim import run_seed

DEFAULT_SEEDS = 2000


def _seeds() -> list[int]:
    one = os.environ.get("NEXUS_RAFT_SEED")
    if one:
        return [int(one)]
    return list(range(int(os.environ.get("NEXUS_RAFT_SEEDS", DEFAULT_SEEDS))))


def run_chunk(seeds: list[int]) -> tuple[collections.Counter[str], int]:
    """Runs seeds in order; returns summed stats and the slowest recovery after healing."""
    total = collections.Counter[str]()
    slowest = 0
    for seed in seeds:
        stats = run_seed(seed).stats
        slowest = max(slowest, stats.pop("recovery_ticks", 0))
        total.update(stats)
    return total, slowest


def test_simulation_keeps_safety_and_recovers() -> None:
    started = time.perf_counter()
    seeds = _seeds()
    workers = int(os.environ.get("NEXUS_RAFT_WORKERS", min(os.cpu_count() or 1, 4)))
    workers = max(1, min(workers, len(seeds) // 200))
    if workers == 1:
        results = [run_chunk(seeds)]
    else:
        chunks = [seeds[k::workers] for k in range(workers)]
        # spawn, not fork: other tests in this process may have started gRPC threads.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(pool.map(run_chunk, chunks))
    total = collections.Counter[str]()
    for stats, _ in results:
        total.update(stats)
    slowest = max(s for _, s in results)
    elapsed = time.perf_counter() - started
    print(f"\n{len(seeds)} seeds, {workers} processes, {elapsed:.1f}s; slowest recovery after "
          f"healing {slowest} ticks; {dict(sorted(total.items()))}")
    assert total["applied"] > 0
    if len(seeds) >= 200:  # the faults actually happened
        for what in ("crashes", "crashes_before_persist", "partitions", "transfers", "membership_changes"):
            assert total[what] > 0, what
