"""The node's runner pool on real runner processes: one library family per runner when
memory is short, both in one runner otherwise. What a runner loaded is read from the
libraries its process maps (/proc/PID/maps), not from what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus_node.runner import families
from nexus_node.runner.pool import RunnerPool


def _maps_torch(pid: int) -> bool:
    return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps (Linux)")
async def test_a_pool_short_of_memory_replaces_the_runner_when_the_family_changes():
    pool = RunnerPool("work", 1, 1, one_family=True)
    try:
        tables = await pool.runner_for(0, families.TABLES)
        assert tables.family == families.TABLES and not _maps_torch(tables.pid)
        assert (await pool.runner_for(0, families.TABLES)) is tables          # kept while the family holds
        pid = tables.pid
        networks = await pool.runner_for(0, families.NETWORKS)
        assert networks is not tables and not tables.alive
        assert not Path(f"/proc/{pid}").exists()   # stopped and reaped before the new one started
        assert networks.family == families.NETWORKS and _maps_torch(networks.pid)
        assert (await pool.runner_for(0, families.ANY)) is networks           # any runner serves either
    finally:
        await pool.close()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps (Linux)")
async def test_a_pool_with_memory_keeps_one_runner_for_both_families():
    pool = RunnerPool("work", 1, 1)
    try:
        first = await pool.runner_for(0, families.TABLES)
        assert first.family == families.ANY and _maps_torch(first.pid)   # warmed torch up at start
        assert (await pool.runner_for(0, families.NETWORKS)) is first
    finally:
        await pool.close()
