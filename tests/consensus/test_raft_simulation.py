"""The seeded simulation of the Raft core (issue 3's required test), and its variant with a
minority of the voters down for good after membership changes; see ``sim.py``.

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


def run_chunk(seeds: list[int], minority_down: bool = False) -> tuple[collections.Counter[str], int]:
    """Runs seeds in order; returns summed stats and the slowest recovery after healing."""
    total = collections.Counter[str]()
    slowest = 0
    for seed in seeds:
        stats = run_seed(seed, minority_down=minority_down).stats
        slowest = max(slowest, stats.pop("recovery_ticks", 0))
        total.update(stats)
    return total, slowest


def run_minority_chunk(seeds: list[int]) -> tuple[collections.Counter[str], int]:
    return run_chunk(seeds, minority_down=True)


def test_simulation_keeps_safety_and_recovers() -> None:
    _simulate(run_chunk, "")


def test_simulation_recovers_with_a_minority_of_voters_down_for_good_after_membership_changes() -> None:
    """Sim.run_minority_down: after the usual run, the leader adds and promotes members under
    faults, then it and up to a minority of the voters stay down: the others must elect a
    leader and commit, whatever configurations each of them holds."""
    total = _simulate(run_minority_chunk, " (a minority down for good)")
    if len(_seeds()) >= 200:
        assert total["minority_down"] > 0


def _simulate(chunk_runner, what: str) -> collections.Counter[str]:
    started = time.perf_counter()
    seeds = _seeds()
    workers = int(os.environ.get("NEXUS_RAFT_WORKERS", min(os.cpu_count() or 1, 4)))
    workers = max(1, min(workers, len(seeds) // 200))
    if workers == 1:
        results = [chunk_runner(seeds)]
    else:
        chunks = [seeds[k::workers] for k in range(workers)]
        # spawn, not fork: other tests in this process may have started gRPC threads.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(pool.map(chunk_runner, chunks))
    total = collections.Counter[str]()
    for stats, _ in results:
        total.update(stats)
    slowest = max(s for _, s in results)
    elapsed = time.perf_counter() - started
    print(f"\n{len(seeds)} seeds{what}, {workers} processes, {elapsed:.1f}s; slowest recovery after "
          f"healing {slowest} ticks; {dict(sorted(total.items()))}")
    assert total["applied"] > 0
    if len(seeds) >= 200:  # the faults actually happened
        for fault in ("crashes", "crashes_before_persist", "partitions", "transfers", "membership_changes",
                      "compactions", "snapshots_sent", "snapshots_installed"):
            assert total[fault] > 0, fault
    return total
