"""Jobs screen: every job with its state, progress, best value, elapsed time, engine."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_tui import format as fmt
from nexus_tui.messages import DataChanged
from nexus_tui.screens.base import DataScreen

COLUMNS = ("job", "state", "progress", "best", "elapsed", "target", "constraints", "message")


class JobsScreen(DataScreen):
    CSS_PATH = "jobs.tcss"
    BINDINGS = [Binding("enter", "open_job", "Open job", show=True)]

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="jobs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#jobs", DataTable)
        for name in COLUMNS:
            table.add_column(name, key=name)
        super().on_mount()

    def changed(self, message: DataChanged) -> None:
        if message.what != "jobs":
            return
        job = self.nexus.state.jobs.get(message.job_id) if message.job_id else None
        table = self.query_one("#jobs", DataTable)
        if job is not None and job.job_id in table.rows:
            # One job changed: update its cells in place instead of rebuilding the table.
            for name, value in zip(COLUMNS, self._row(job, self.nexus.clock())):
                table.update_cell(job.job_id, name, value)
        else:
            self.redraw()

    def redraw(self) -> None:
        table = self.query_one("#jobs", DataTable)
        cursor = table.cursor_row
        table.clear()
        now = self.nexus.clock()
        # Newest first: the job a user just submitted is on top.
        for job in sorted(self.nexus.state.jobs.values(), key=lambda j: (-j.created_at, j.job_id)):
            table.add_row(*self._row(job, now), key=job.job_id)
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))

    @staticmethod
    def _row(job: pb.Job, now: float) -> tuple[object, ...]:
        fraction, label = fmt.progress(job, now)
        state = fmt.job_state(job)
        return (job.job_id, fmt.styled_state(state),
                Text.assemble((fmt.bar(fraction, 12), "cyan"), f" {label}"),
                fmt.best(job), fmt.duration(fmt.elapsed(job, now)), job.spec.target,
                job.constraints_source or "-", job.message[:40])

    @on(DataTable.RowSelected, "#jobs")
    def _selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.open_job(event.row_key.value)

    def action_open_job(self) -> None:
        table = self.query_one("#jobs", DataTable)
        if table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            if key:
                self.open_job(key)

    def open_job(self, job_id: str) -> None:
        from nexus_tui.screens.job import JobScreen

        self.app.push_screen(JobScreen(job_id))
