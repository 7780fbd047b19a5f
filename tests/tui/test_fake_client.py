"""Behaviour of the dashboard over the fake client: big clusters, live events, sorting,
inline validation, the command palette, and recovery when the node goes away."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Input, Select, Static

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_tui.fake_client import FakeClusterClient, make_cluster
from nexus_tui.screens.job import JobScreen
from tests.tui.conftest import SIZE, fake_app, settle, until


async def test_500_trials_and_20_nodes_render():
    fake = FakeClusterClient(nodes=20, trials=500)
    app = fake_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert app.screen.query_one("#nodes", DataTable).row_count == 20
        await pilot.press("f3")
        await pilot.pause()
        assert app.screen.query_one("#jobs", DataTable).row_count == 2
        app.screen.open_job("job-a")
        await settle(pilot, app)
        table = app.screen.query_one("#trials", DataTable)
        assert table.row_count == 500
        # Sorting by value puts the best trial last (ascending), then first (again: reversed).
        screen = app.screen
        assert isinstance(screen, JobScreen)
        screen.sort_by("value")
        screen.sort_by("value")
        best = max((t for t in fake.trials["job-a"] if t.has_value), key=lambda t: t.value)
        assert table.get_row_at(0)[0] == str(best.number)


async def test_live_events_update_jobs_and_trials():
    fake = FakeClusterClient(nodes=3, trials=10)
    app = fake_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        app.switch_mode("jobs")
        await pilot.pause()
        app.screen.open_job("job-b")
        await settle(pilot, app)
        table = app.screen.query_one("#trials", DataTable)
        assert table.row_count == 6
        job = pb.Job()
        job.CopyFrom(fake.jobs["job-b"])
        job.trials.complete += 1
        trial = pb.TrialInfo(number=6, state="COMPLETE", value=0.93, has_value=True, node_id="node-02")
        await until(pilot, lambda: "job-b" in app._watching, 5, "the job watch")
        fake.push_event(pb.JobEvent(kind=pb.TRIAL_FINISHED, job=job, trial=trial))
        await until(pilot, lambda: table.row_count == 7, 5, "the new trial row")
        assert app.state.jobs["job-b"].trials.complete == job.trials.complete
        # The cluster stream moves a node's slots; the cluster screen shows it.
        bigger = make_cluster(5)
        fake.push_cluster(bigger)
        await until(pilot, lambda: app.state.cluster is not None and len(app.state.cluster.nodes) == 5, 5)
        app.switch_mode("cluster")
        await pilot.pause()
        assert app.screen.query_one("#nodes", DataTable).row_count == 5


async def test_submit_validates_inline(tmp_path: Path):
    csv = tmp_path / "data.csv"
    csv.write_text("a,b,target\n1,2,3\n")
    fake = FakeClusterClient()
    app = fake_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("f4")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#submit").press()
        await pilot.pause()
        assert "choose a CSV file" in str(screen.query_one("#path-error", Static).render())
        assert "pick the column" in str(screen.query_one("#target-error", Static).render())
        screen.query_one("#path", Input).value = str(csv)
        screen.query_one("#trials", Input).value = "-3"
        screen.query_one("#constraints", Input).value = "[1]"
        await pilot.pause()
        select = screen.query_one("#target", Select)
        assert [str(o[0]) for o in select._options[1:]] == ["a", "b", "target"]
        select.value = "target"
        screen.query_one("#submit").press()
        await pilot.pause()
        assert "whole number" in str(screen.query_one("#trials-error", Static).render())
        assert "JSON object" in str(screen.query_one("#constraints-error", Static).render())
        assert fake.submitted == []
        screen.query_one("#trials", Input).value = "5"
        screen.query_one("#constraints", Input).value = '{"max_layers": 2}'
        screen.query_one("#submit").press()
        await settle(pilot, app)
        assert fake.submitted[0]["target"] == "target"
        assert fake.submitted[0]["constraints"] == {"max_layers": 2}
        assert "submitted job" in str(screen.query_one("#submit-status", Static).render())


async def test_submit_lists_the_columns_of_every_table_file_the_node_accepts(tmp_path: Path):
    """Semicolon, tab and pipe separated, gzip-compressed, UTF-16 with a BOM (Excel's "Unicode
    text"), Parquet: the node takes them all (pipeline/tableformat.py), so the form must offer
    their columns as targets, not refuse them as headerless."""
    import gzip

    import pandas as pd

    files = {
        "semicolon.csv": "age;price;city\n1;2,5;Oslo\n".encode(),
        "tabs.tsv": b"age\tprice\tcity\n1\t2.5\tOslo\n",
        "pipes.txt": b"age|price|city\n1|2.5|Oslo\n",
        "packed.csv.gz": gzip.compress(b"age,price,city\n1,2.5,Oslo\n"),
        "excel.txt": "age\tprice\tcity\n1\t2.5\tOslo\n".encode("utf-16"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    pd.DataFrame({"age": [1], "price": [2.5], "city": ["Oslo"]}).to_parquet(tmp_path / "table.parquet")
    app = fake_app(FakeClusterClient())
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("f4")
        await pilot.pause()
        screen = app.screen
        for name in [*files, "table.parquet"]:
            screen.query_one("#path", Input).value = str(tmp_path / name)
            await pilot.pause()
            select = screen.query_one("#target", Select)
            assert [str(o[0]) for o in select._options[1:]] == ["age", "price", "city"], name


async def test_path_completion(tmp_path: Path):
    (tmp_path / "insurance.csv").write_text("x,y\n")
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("f4")
        await pilot.pause()
        field = app.screen.query_one("#path", Input)
        field.focus()
        field.value = str(tmp_path / "ins")
        await pilot.pause()
        await pilot.press("right")   # accepts the suggestion
        await pilot.pause()
        assert field.value == str(tmp_path / "insurance.csv")


async def test_command_palette_lists_every_screen():
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"predict")
        await pilot.pause(0.3)   # the palette searches on a short debounce timer
        await pilot.press("enter")
        await pilot.pause()
        assert app.current_mode == "predict"
        await pilot.press("f1")
        await pilot.pause()
        assert type(app.screen).__name__ == "HelpScreen"


async def test_node_going_away_is_reported_and_recovered():
    fakes = [FakeClusterClient(address="fake:7070")]
    app = fake_app(fakes[0])
    app.client_factory = lambda address: fakes[-1]
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert app.sub_title == "connected to fake:7070"
        fakes[0].go_down()
        await until(pilot, lambda: "lost" in app.sub_title, 5, "the loss to be reported")
        fakes.append(FakeClusterClient(address="fake:7070"))
        await until(pilot, lambda: app.sub_title == "connected to fake:7070", 10, "the reconnection")
        assert app.client is fakes[-1]
