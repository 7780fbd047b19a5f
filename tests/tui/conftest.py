"""Fixtures for the dashboard tests: apps over the fake client or a real node."""

from __future__ import annotations

from typing import Awaitable, Callable

from nexus_tui.app import NexusApp, create_app
from nexus_tui.fake_client import EPOCH, FakeClusterClient

SIZE = (120, 40)


def fake_app(fake: FakeClusterClient | None = None, **kwargs: object) -> NexusApp:
    """An app over a fake client, with the clock fixed so pictures are reproducible."""
    fake = fake or FakeClusterClient()
    kwargs.setdefault("clock", lambda: EPOCH)
    kwargs.setdefault("discover", lambda: [])
    return create_app(fake.address, client_factory=lambda address: fake, **kwargs)


def real_app(address: str, **kwargs: object) -> NexusApp:
    """An app over the real gRPC client. mDNS is real too unless a test replaces it."""
    return create_app(address, **kwargs)


async def until(pilot, condition: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    """Wait for ``condition`` while an external process (a node, a job) gets there: a
    bounded loop of short pilot pauses, so the app keeps processing messages meanwhile."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what or condition}")


async def settle(pilot, app: NexusApp) -> None:
    """Let every worker finish and every posted message be handled (fake client only:
    its watches block, so only the finite workers are waited for)."""
    for _ in range(3):
        await pilot.pause()
        done = [w for w in app.workers if w.group not in ("cluster", "default")]
        for w in done:
            await w.wait()
        await pilot.pause()


Runner = Callable[[NexusApp], Awaitable[None]]
