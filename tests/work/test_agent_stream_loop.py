"""The worker's stream loop ends when the driver stops instead of spinning (issue 19: it spun at
100% CPU, every RPC timing out, because ``wait_for`` raises MeshStopped before it suspends and
the loop swallowed every exception)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from nexus_node.consensus.driver import MeshStopped
from nexus_node.work.agent import WorkerAgent


class Spun(BaseException):
    """Raised by the fake after many calls without a suspension: no ``except Exception`` eats it."""


class StoppedDriver:
    """A driver whose loop failed: no leader, and every wait raises at once."""

    leader = None
    calls = 0

    async def wait_for(self, predicate, timeout):  # noqa: ANN001
        self.calls += 1
        if self.calls > 1000:
            raise Spun
        raise MeshStopped("node n1 failed: database or disk is full")


async def test_the_stream_loop_ends_with_the_driver_instead_of_spinning():
    driver = StoppedDriver()
    agent = WorkerAgent(node_id="n1", cluster="c", address="127.0.0.1:1", pool=None, blobs=None,
                        mesh=SimpleNamespace(driver=driver), placement=None, fetch_blob=lambda sha: None,
                        storage={})
    agent.start()
    assert agent.task is not None
    with pytest.raises(MeshStopped):
        await asyncio.wait_for(agent.task, 5)
    assert driver.calls == 1
