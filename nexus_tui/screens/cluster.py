"""Cluster screen: every node with its role, term, heartbeat age, slots, memory, trials."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Header, Static

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_tui.format import ago, bar, size
from nexus_tui.messages import DataChanged
from nexus_tui.screens.base import DataScreen

COLUMNS = ("node", "address", "role", "term", "heartbeat", "slots", "memory free/total", "device", "running")


class ClusterScreen(DataScreen):
    CSS_PATH = "cluster.tcss"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="cluster-summary")
        yield DataTable(id="nodes", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#nodes", DataTable).add_columns(*COLUMNS)
        super().on_mount()

    def changed(self, message: DataChanged) -> None:
        if message.what == "cluster":
            self.redraw()

    def redraw(self) -> None:
        cluster = self.nexus.state.cluster
        summary = self.query_one("#cluster-summary", Static)
        table = self.query_one("#nodes", DataTable)
        if cluster is None:
            summary.update(Text(f"waiting for {self.nexus.address}", style="dim"))
            return
        busy = sum(n.slots_busy for n in cluster.nodes)
        total = sum(n.slots_total for n in cluster.nodes)
        summary.update(Text.assemble(
            ("cluster ", "dim"), (cluster.cluster_name or "-", "bold"),
            ("  coordinator ", "dim"), (cluster.coordinator_id or "none", "bold magenta"),
            ("  term ", "dim"), str(cluster.term),
            ("  nodes ", "dim"), str(len(cluster.nodes)),
            ("  slots busy ", "dim"), f"{busy}/{total}",
        ))
        now = self.nexus.clock()
        # Rows are keyed by node id: a redraw keeps the cursor on the same node.
        cursor = table.cursor_row
        table.clear()
        for node in cluster.nodes:
            table.add_row(*self._row(node, cluster.coordinator_id, now), key=node.node_id)
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))

    @staticmethod
    def _row(node: pb.NodeInfo, coordinator: str, now: float) -> tuple[object, ...]:
        is_coord = node.node_id == coordinator or node.role == pb.COORDINATOR
        role_name = pb.NodeRole.Name(node.role).replace("NODE_ROLE_", "").lower() if node.role else "unknown"
        role = Text(f"★ {role_name}" if is_coord else role_name, style="bold magenta" if is_coord else "")
        slots = Text.assemble((bar(node.slots_busy / node.slots_total if node.slots_total else 0, 6), "cyan"),
                              f" {node.slots_busy}/{node.slots_total}")
        memory = f"{size(node.memory_free_bytes)} / {size(node.memory_total_bytes)}"
        running = ", ".join(node.running[:4]) + (f" +{len(node.running) - 4}" if len(node.running) > 4 else "")
        return (Text(node.node_id, style="bold" if is_coord else ""), node.address, role, str(node.term),
                ago(node.last_contact, now), slots, memory, node.accelerator, running or "-")
