"""Job screen: trials (sortable), optimisation history, feature importance, test metrics,
summary and the constraints the search ran under."""

from __future__ import annotations

import json

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static

from nexus_client.client import is_terminal, trials_done
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_tui import format as fmt
from nexus_tui.charts import HistoryPlot, ImportanceBars
from nexus_tui.client import RequestFailed, Unreachable
from nexus_tui.messages import DataChanged
from nexus_tui.screens.base import DataScreen

COLUMNS = ("trial", "state", "node", "value", "duration", "epochs", "params")
# How each column sorts: by the trial's raw field, never by its formatted text.
SORT_KEYS = {
    "trial": lambda t: t.number, "state": lambda t: t.state, "node": lambda t: t.node_id,
    "value": lambda t: t.value, "duration": lambda t: t.duration_seconds,
    "epochs": lambda t: t.last_step, "params": lambda t: t.params_json,
}


class JobScreen(DataScreen):
    CSS_PATH = "job.tcss"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("x", "cancel_job", "Cancel job"),
        Binding("o", "sort_next", "Sort"),
    ]

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.sort_column = "trial"
        self.sort_reverse = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="job-head")
        with Horizontal(id="job-main"):
            yield DataTable(id="trials", cursor_type="row", zebra_stripes=True)
            with Vertical(id="charts"):
                yield HistoryPlot(id="history")
                yield ImportanceBars(id="importance")
        with Horizontal(id="job-results"):
            with VerticalScroll(id="metrics-box"):
                yield Static(id="metrics")
            with VerticalScroll(id="summary-box"):
                yield Static(id="summary")
            with VerticalScroll(id="constraints-box"):
                yield Static(id="constraints")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#trials", DataTable)
        for name in COLUMNS:
            table.add_column(name, key=name)
        if self.job_id not in self.nexus.state.trials:
            self.nexus.load_trials(self.job_id)
        job = self.nexus.state.jobs.get(self.job_id)
        if job is not None and not is_terminal(job.state):
            self.nexus.watch_job_events(self.job_id)
        super().on_mount()

    @property
    def job(self) -> pb.Job | None:
        return self.nexus.state.jobs.get(self.job_id)

    def changed(self, message: DataChanged) -> None:
        if message.job_id != self.job_id:
            return
        if message.what == "trials" and message.trial is not None:
            self._trial_arrived(message.trial)
        elif message.what == "trials":
            self._draw_trials()
            self._draw_history()
        else:
            self._draw_job()

    def redraw(self) -> None:
        self._draw_job()
        self._draw_trials()
        self._draw_history()

    def _trial_arrived(self, trial: pb.TrialInfo) -> None:
        table = self.query_one("#trials", DataTable)
        key = str(trial.number)
        if self.sort_column == "trial" and not self.sort_reverse and key not in table.rows:
            # The common live case: append one row rather than rebuild 500.
            table.add_row(*self._row(trial), key=key)
        else:
            self._draw_trials()
        self._draw_history()

    def _draw_job(self) -> None:
        job = self.job
        head = self.query_one("#job-head", Static)
        if job is None:
            head.update(Text(f"job {self.job_id}: not known to this node", style="red"))
            return
        state = fmt.job_state(job)
        counts = job.trials
        head.update(Text.assemble(
            ("job ", "dim"), (job.job_id, "bold"), "  ", fmt.styled_state(state),
            ("  target ", "dim"), job.spec.target, ("  best ", "dim"), fmt.best(job),
            ("  trials ", "dim"), f"{trials_done(job)} done ({counts.complete} complete, "
            f"{counts.pruned} pruned, {counts.fail} failed, {counts.running} running)",
            ("  elapsed ", "dim"), fmt.duration(fmt.elapsed(job, self.nexus.clock())),
            ("\n" + job.message, "dim"),
        ))
        metrics = Text("test metrics\n", style="bold")
        for name, value in sorted(job.test_metrics.items()):
            metrics.append(f"{name:>10} {value:.4g}\n", style="")
        if not job.test_metrics:
            metrics.append("not evaluated yet", style="dim")
        self.query_one("#metrics", Static).update(metrics)
        summary = Text("summary\n", style="bold")
        summary.append(job.summary or "written when the job completes", style="" if job.summary else "dim")
        self.query_one("#summary", Static).update(summary)
        self.query_one("#constraints", Static).update(self._constraints(job))
        self.query_one("#importance", ImportanceBars).show(list(job.feature_importance))

    @staticmethod
    def _constraints(job: pb.Job) -> Text:
        text = Text.assemble(("constraints", "bold"), (f" ({job.constraints_source or 'not set yet'})\n", "dim"))
        try:
            data = json.loads(job.constraints_json) if job.constraints_json else {}
        except json.JSONDecodeError:
            data = {"raw": job.constraints_json}
        for key, value in data.items():
            text.append(f"{key}: {json.dumps(value)}\n")
        return text

    def _draw_trials(self) -> None:
        table = self.query_one("#trials", DataTable)
        trials = self.nexus.state.job_trials(self.job_id)
        if self.sort_column == "value":
            # Trials without a value (failed, running) go last whichever way values sort.
            trials = [t for t in trials if t.has_value] + [t for t in trials if not t.has_value]
            valued = sum(t.has_value for t in trials)
            trials[:valued] = sorted(trials[:valued], key=SORT_KEYS["value"], reverse=self.sort_reverse)
        else:
            trials = sorted(trials, key=SORT_KEYS[self.sort_column], reverse=self.sort_reverse)
        table.clear()
        for t in trials:
            table.add_row(*self._row(t), key=str(t.number))

    def _draw_history(self) -> None:
        job = self.job
        trials = self.nexus.state.job_trials(self.job_id)
        self.query_one("#history", HistoryPlot).show(trials, job.metric if job else "", job.maximize if job else True)

    @staticmethod
    def _row(t: pb.TrialInfo) -> tuple[object, ...]:
        value = f"{t.value:.4g}" if t.has_value else "-"
        return (str(t.number), fmt.styled_state(t.state), t.node_id or "-", value,
                fmt.duration(t.duration_seconds) if t.duration_seconds else "-", str(t.last_step),
                t.message or fmt.params(t.params_json))

    @on(DataTable.HeaderSelected, "#trials")
    def _header(self, event: DataTable.HeaderSelected) -> None:
        self.sort_by(str(event.column_key.value))

    def sort_by(self, column: str) -> None:
        """Sort the trials by ``column``; choosing the same column again reverses."""
        self.sort_reverse = not self.sort_reverse if column == self.sort_column else False
        self.sort_column = column
        self._draw_trials()

    def action_sort_next(self) -> None:
        self.sort_by(COLUMNS[(COLUMNS.index(self.sort_column) + 1) % len(COLUMNS)])

    def action_cancel_job(self) -> None:
        job = self.job
        if job is not None and not is_terminal(job.state):
            self._cancel(job.job_id)

    @work(thread=True, group="cancel")
    def _cancel(self, job_id: str) -> None:
        client = self.nexus.client
        if client is None:
            return
        try:
            client.cancel(job_id)
            self.app.call_from_thread(self.notify, f"cancelling {job_id}")
        except (Unreachable, RequestFailed) as e:
            self.app.call_from_thread(self.notify, f"could not cancel {job_id}: {e}", severity="error")
