"""Submit screen: a CSV with path completion, the target picked from its header, the use
case and budgets; every problem is shown beside its field before anything is sent."""

from __future__ import annotations

import json
import os
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static

from nexus_tui.client import RequestFailed, Unreachable
from nexus_tui.screens.base import DataScreen
from nexus_tui.screens.paths import PathSuggester, csv_header

#: Names of the table files the node accepts (it reads the content, whatever the name).
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".gz", ".parquet", ".pq")

FIELDS = ("path", "target", "use-case", "trials", "time", "constraints")


def _non_negative(text: str, kind: type[int] | type[float]) -> float | None:
    try:
        value = kind(text)
    except ValueError:
        return None
    return value if value >= 0 else None


class SubmitScreen(DataScreen):
    CSS_PATH = "form.tcss"

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(classes="form"):
            yield Label("CSV file")
            yield Input(placeholder="path/to/data.csv (tab completes)", id="path", suggester=PathSuggester(TABLE_SUFFIXES))
            yield Static(classes="error", id="path-error")
            yield Label("Target column (from the file's header)")
            yield Select[str]([], id="target", prompt="choose the column to predict")
            yield Static(classes="error", id="target-error")
            yield Label("Use case")
            yield Input(placeholder="e.g. price health insurance", id="use-case")
            yield Static(classes="error", id="use-case-error")
            with Horizontal(classes="row"):
                with VerticalScroll(classes="cell"):
                    yield Label("Trials (0: the node's default)")
                    yield Input("20", id="trials", type="integer")
                    yield Static(classes="error", id="trials-error")
                with VerticalScroll(classes="cell"):
                    yield Label("Time budget, seconds (0: none)")
                    yield Input("0", id="time", type="number")
                    yield Static(classes="error", id="time-error")
            yield Label("Constraints (optional JSON, narrows the search space)")
            yield Input(placeholder='{"max_layers": 2, "max_epochs": 30}', id="constraints")
            yield Static(classes="error", id="constraints-error")
            yield Button("Submit", id="submit", variant="primary")
            yield Static(id="submit-status")
        yield Footer()

    @on(Input.Changed, "#path")
    def _path_changed(self, event: Input.Changed) -> None:
        header = csv_header(event.value) if event.value.lower().endswith(TABLE_SUFFIXES) else None
        select = self.query_one("#target", Select)
        select.set_options([(c, c) for c in header or []])
        if header:
            self._error("path", "")

    def _error(self, name: str, text: str) -> None:
        self.query_one(f"#{name}-error", Static).update(text)

    def validate(self) -> dict[str, Any] | None:
        """The job's arguments, or None after showing every problem inline."""
        errors = dict.fromkeys(FIELDS, "")
        path = os.path.expanduser(self.query_one("#path", Input).value.strip())
        if not path:
            errors["path"] = "choose a CSV file"
        elif not os.path.isfile(path):
            errors["path"] = f"no file at {path}"
        elif csv_header(path) is None:
            errors["path"] = ("the file has no header row that can be read (a CSV, gzip-compressed or not, "
                              "or Parquet with pyarrow installed)")
        target = self.query_one("#target", Select).value
        if not isinstance(target, str):
            errors["target"] = "pick the column to predict"
        use_case = self.query_one("#use-case", Input).value.strip()
        trials_text = self.query_one("#trials", Input).value.strip() or "0"
        time_text = self.query_one("#time", Input).value.strip() or "0"
        trials = _non_negative(trials_text, int)
        if trials is None:
            errors["trials"] = "a whole number, 0 or more"
        time_budget = _non_negative(time_text, float)
        if time_budget is None:
            errors["time"] = "seconds, 0 or more"
        constraints = None
        if text := self.query_one("#constraints", Input).value.strip():
            try:
                constraints = json.loads(text)
                if not isinstance(constraints, dict):
                    raise ValueError
            except ValueError:
                errors["constraints"] = 'a JSON object, e.g. {"max_layers": 2}'
        for name, message in errors.items():
            self._error(name, message)
        if any(errors.values()) or trials is None or time_budget is None:
            return None
        return dict(path=path, target=target, use_case=use_case, max_trials=int(trials),
                    time_budget=time_budget, constraints=constraints)

    @on(Button.Pressed, "#submit")
    @on(Input.Submitted)
    def action_submit(self) -> None:
        args = self.validate()
        if args is None:
            return
        if self.nexus.client is None:
            self.query_one("#submit-status", Static).update("not connected to a node")
            return
        self.query_one("#submit", Button).disabled = True
        self.query_one("#submit-status", Static).update(f"uploading {os.path.basename(args['path'])}…")
        self._submit(args)

    @work(thread=True, exclusive=True, group="submit")
    def _submit(self, args: dict[str, Any]) -> None:
        client = self.nexus.client
        try:
            assert client is not None
            path, target = args.pop("path"), args.pop("target")
            job = client.submit(path, target, **args)
        except (Unreachable, RequestFailed, OSError) as e:
            self.app.call_from_thread(self._failed, str(e))
        else:
            self.app.call_from_thread(self._submitted, job.job_id)

    def _failed(self, message: str) -> None:
        self.query_one("#submit", Button).disabled = False
        status = self.query_one("#submit-status", Static)
        status.update(f"the node refused the job: {message}")
        status.add_class("error")

    def _submitted(self, job_id: str) -> None:
        self.query_one("#submit", Button).disabled = False
        status = self.query_one("#submit-status", Static)
        status.remove_class("error")
        status.update(f"submitted job {job_id}")
        self.notify(f"job {job_id} submitted")
        self.nexus.load_jobs()
        self.nexus.watch_job_events(job_id)
