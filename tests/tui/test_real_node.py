"""The dashboard against real nodes on loopback (through the real gRPC client)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Select, Static

from nexus_client.client import NexusClient
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_tui.charts import HistoryPlot, ImportanceBars
from tests.conftest import NodeProcess, free_port
from tests.node.helpers import FAST
from tests.tui.conftest import SIZE, real_app, until

JOB_TIMEOUT = 120.0


async def test_cluster_screen_shows_the_node(node_address: str):
    app = real_app(node_address)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected, 20, "the connection")
        table = app.screen.query_one("#nodes", DataTable)
        await until(pilot, lambda: table.row_count == 1, 10, "the node row")
        node = app.state.cluster.nodes[0]
        row = table.get_row(node.node_id)
        assert node.address == node_address == row[1]
        assert "coordinator" in str(row[2])


async def test_submit_watch_job_screen_and_predict(node_address: str, insurance_csv: Path, tmp_path: Path):
    app = real_app(node_address)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected, 20, "the connection")
        await pilot.press("f4")
        await pilot.pause()
        form = app.screen
        form.query_one("#path", Input).value = str(insurance_csv)
        await pilot.pause()
        form.query_one("#target", Select).value = "charges"
        form.query_one("#use-case", Input).value = "price health insurance"
        form.query_one("#trials", Input).value = "4"
        form.query_one("#constraints", Input).value = FAST
        form.query_one("#submit").press()
        status = form.query_one("#submit-status", Static)
        await until(pilot, lambda: "submitted job" in str(status.render()), 30, "the submission")
        job_id = str(status.render()).split()[-1]

        await pilot.press("f3")
        await until(pilot, lambda: job_id in app.screen.query_one("#jobs", DataTable).rows, 10, "the job row")
        await until(pilot, lambda: app.state.jobs[job_id].state == pb.COMPLETED, JOB_TIMEOUT, "the job to complete")

        app.screen.open_job(job_id)
        await pilot.pause()
        job_screen = app.screen
        assert type(job_screen).__name__ == "JobScreen"
        await until(pilot, lambda: job_screen.query_one("#trials", DataTable).row_count == 4, 20, "4 trials")
        assert "r2" in str(job_screen.query_one("#metrics", Static).render())
        assert "feature importance" in str(job_screen.query_one("#importance", ImportanceBars).render())
        plot = job_screen.query_one("#history", HistoryPlot)
        assert plot.plt._active.monitor.x   # the history has points (plotext's figure data)
        assert str(job_screen.query_one("#summary", Static).render()).strip() != "summary"

        rows = tmp_path / "rows.csv"
        with open(insurance_csv) as f:
            rows.write_text("".join(f.readlines()[:26]))   # header + 25 rows
        out = tmp_path / "out.csv"
        await pilot.press("f5")
        await until(pilot, lambda: app.state.models, 10, "the models")
        predict = app.screen
        predict.query_one("#model", Select).value = app.state.jobs[job_id].model_id
        predict.query_one("#input", Input).value = str(rows)
        predict.query_one("#output", Input).value = str(out)
        predict.query_one("#predict").press()
        done = predict.query_one("#predict-status", Static)
        await until(pilot, lambda: "wrote" in str(done.render()), 30, "the predictions")
        with open(out) as f:
            assert len(list(csv.reader(f))) == 26
        assert predict.query_one("#preview", DataTable).row_count == 10
        assert "warning" not in str(done.render())

        # Rows the model knows little about are predicted, and the screen says so.
        unusual = tmp_path / "unusual.csv"
        unusual.write_text("age,sex,bmi,children,smoker,region\n30,martian,25.0,1,no,mars\n,,,,,\n")
        predict.query_one("#input", Input).value = str(unusual)
        predict.query_one("#predict").press()
        await until(pilot, lambda: "wrote 2 predictions" in str(done.render()), 30, "the second predictions")
        assert ("warning: of 2 rows, 1 holds categories the model never learned: region (1), sex (1); "
                "1 is empty in every input column") in str(done.render())
        assert "outside the training range" not in str(done.render())

        # So are rows whose numbers lie outside what the model trained on.
        far = tmp_path / "far.csv"
        far.write_text("age,sex,bmi,children,smoker,region\n130,male,25.0,1,no,southeast\n30,male,25.0,1,no,southeast\n")
        predict.query_one("#input", Input).value = str(far)
        predict.query_one("#predict").press()
        await until(pilot, lambda: "outside" in str(done.render()), 30, "the third predictions")
        assert "note: 1 of 2 rows lie outside the training range of age" in str(done.render())


async def test_unreachable_node_offers_an_address(node_address: str):
    dead = f"127.0.0.1:{free_port()}"
    app = real_app(dead, discover=lambda: [])
    async with app.run_test(size=SIZE) as pilot:
        # The screen is pushed before it is composed: wait for its widgets, not just its type.
        await until(pilot, lambda: type(app.screen).__name__ == "ConnectScreen" and app.screen.query("#address"),
                    20, "the connect screen")
        message = str(app.screen.query_one("#message", Static).render())
        assert message == f"No node reachable at {dead}; found by mDNS: none"
        field = app.screen.query_one("#address", Input)
        field.value = node_address
        await pilot.press("enter")
        await until(pilot, lambda: app.connected, 20, "the connection")
        assert app.sub_title == f"connected to {node_address}"


async def test_reconnects_when_the_node_comes_back(tmp_path: Path):
    node = NodeProcess(tmp_path / "node", "--slots", "1").start()
    try:
        app = real_app(node.address, discover=lambda: [])
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.connected, 20, "the connection")
            node.kill()
            await until(pilot, lambda: "lost" in app.sub_title, 20, "the loss to be reported")
            assert not app.connected
            node = NodeProcess(tmp_path / "node", "--slots", "1", port=node.port).start()
            await until(pilot, lambda: app.connected, 30, "the reconnection")
            assert app.sub_title == f"connected to {node.address}"
            assert app.screen.query_one("#nodes", DataTable).row_count == 1
    finally:
        node.stop()


@pytest.mark.timeout(60)
def test_watch_cluster_streams_changes(node_address: str, insurance_csv: Path):
    """WatchCluster sends the cluster at once, then again when a job's state changes."""
    from nexus_tui.grpc_client import GrpcClusterClient

    client = GrpcClusterClient(node_address)
    try:
        stream = client.watch_cluster()
        first = next(stream)
        assert first.nodes[0].address == node_address
        with NexusClient(node_address) as nexus:
            nexus.submit(insurance_csv, "charges", max_trials=1, constraints={"max_epochs": 5, "min_epochs": 5,
                                                                               "max_layers": 1, "widths": [32]})
        second = next(stream)   # a state change (PENDING → PREPARING) or a busy slot
        assert second.coordinator_id == first.coordinator_id
    finally:
        client.close()


async def test_switches_to_another_node_of_the_cluster_when_its_node_dies(tmp_path: Path):
    """Connected to one node of a two-node cluster; that node is killed; the app says so and
    carries on with the other node, which it learned from the cluster view."""
    ports = [free_port(), free_port()]
    seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
    nodes = [NodeProcess(tmp_path / f"n{i}", "--slots", "1", "--seeds", seeds, "--no-mdns", port=p).start()
             for i, p in enumerate(ports)]
    try:
        first, second = nodes
        app = real_app(first.address, discover=lambda: [])
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.connected, 20, "the connection")
            table = app.screen.query_one("#nodes", DataTable)
            await until(pilot, lambda: table.row_count == 2, 30, "both members")
            assert second.address in app.known_addresses
            first.kill()
            await until(pilot, lambda: app.sub_title == f"connected to {second.address}", 40,
                        "the switch to the other node")
            await until(pilot, lambda: app.screen.query_one("#nodes", DataTable).row_count == 2, 10,
                        "the cluster from the other node")
    finally:
        for n in nodes:
            n.stop()


async def test_the_connect_screen_offers_nodes_found_by_mdns(tmp_path: Path):
    """No node at the given address: the screen lists a real node announcing itself by mDNS
    (on loopback, with --advertise-host) and picking it connects."""
    import uuid

    from textual.widgets import OptionList

    node = NodeProcess(tmp_path / "announced", "--slots", "1", "--advertise-host", "127.0.0.1",
                       "--cluster", f"tui-{uuid.uuid4().hex[:6]}").start()
    try:
        dead = f"127.0.0.1:{free_port()}"
        from nexus_tui.discovery import browse

        app = real_app(dead, discover=lambda: browse(timeout=4.0))   # the real mDNS browse
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: type(app.screen).__name__ == "ConnectScreen" and app.screen.query("#found"),
                        30, "the connect screen with nodes found by mDNS")
            found = app.screen.query_one("#found", OptionList)
            offered = [str(found.get_option_at_index(i).prompt) for i in range(found.option_count)]
            assert node.address in offered
            found.highlighted = offered.index(node.address)
            found.focus()
            await pilot.press("enter")
            await until(pilot, lambda: app.connected, 20, "the connection")
            assert app.sub_title == f"connected to {node.address}"
    finally:
        node.stop()


async def test_a_read_token_is_enough_to_watch_and_not_enough_to_submit(tmp_path: Path, insurance_csv: Path):
    (tmp_path / "token").write_text("admin-secret\n")
    node = NodeProcess(tmp_path / "node", "--token-file", str(tmp_path / "token")).start()
    try:
        with NexusClient(node.address, token="admin-secret") as admin:
            secret = admin.create_token("dashboard", "read").secret
        app = real_app(node.address, token=secret)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.connected, 20, "the connection")
            table = app.screen.query_one("#nodes", DataTable)
            await until(pilot, lambda: table.row_count == 1, 10, "the node row")
            await pilot.press("f4")
            await pilot.pause()
            form = app.screen
            form.query_one("#path", Input).value = str(insurance_csv)
            await pilot.pause()
            form.query_one("#target", Select).value = "charges"
            form.query_one("#trials", Input).value = "2"
            form.query_one("#submit").press()
            status = form.query_one("#submit-status", Static)
            await until(pilot, lambda: "refused" in str(status.render()), 30, "the refusal")
            assert "'submit' role" in str(status.render())
        with NexusClient(node.address, token="admin-secret") as admin:
            assert admin.list_jobs() == []
    finally:
        node.stop()
