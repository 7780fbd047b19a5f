"""SVG snapshots of the main screens over the deterministic fake client (fixed clock).

Regenerate after an intended layout change with ``pytest tests/tui --snapshot-update`` and
look at the report before committing the new pictures.
"""

from __future__ import annotations

from nexus_tui.fake_client import FakeClusterClient
from tests.tui.conftest import SIZE, fake_app, settle


async def _settled(pilot) -> None:
    await settle(pilot, pilot.app)


def test_cluster_screen(snap_compare):
    app = fake_app(FakeClusterClient(nodes=20))
    assert snap_compare(app, terminal_size=SIZE, run_before=_settled)


def test_jobs_screen(snap_compare):
    assert snap_compare(fake_app(), terminal_size=SIZE, press=["f3"], run_before=_settled)


def test_job_screen(snap_compare):
    async def open_job(pilot) -> None:
        await settle(pilot, pilot.app)
        pilot.app.switch_mode("jobs")
        await pilot.pause()
        pilot.app.screen.open_job("job-a")
        await settle(pilot, pilot.app)

    assert snap_compare(fake_app(FakeClusterClient(trials=60)), terminal_size=SIZE, run_before=open_job)


def test_submit_screen(snap_compare):
    assert snap_compare(fake_app(), terminal_size=SIZE, press=["f4"], run_before=_settled)


def test_predict_screen(snap_compare):
    assert snap_compare(fake_app(), terminal_size=SIZE, press=["f5"], run_before=_settled)
