"""Predict screen: a model, an input CSV and an output path; shows the first predictions."""

from __future__ import annotations

import csv
import os
from itertools import islice

from textual import on, work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Select, Static

from nexus_tui.client import RequestFailed, Unreachable
from nexus_tui.messages import DataChanged
from nexus_tui.screens.base import DataScreen
from nexus_tui.screens.paths import PathSuggester

PREVIEW_ROWS = 10


class PredictScreen(DataScreen):
    CSS_PATH = "form.tcss"

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(classes="form"):
            yield Label("Model")
            yield Select[str]([], id="model", prompt="choose a model")
            yield Static(classes="error", id="model-error")
            yield Label("Input CSV (the model's input columns; extra columns are ignored)")
            yield Input(placeholder="path/to/new_rows.csv", id="input", suggester=PathSuggester(".csv"))
            yield Static(classes="error", id="input-error")
            yield Label("Output CSV")
            yield Input(placeholder="predictions.csv", id="output", suggester=PathSuggester())
            yield Static(classes="error", id="output-error")
            yield Button("Predict", id="predict", variant="primary")
            yield Static(id="predict-status")
            yield DataTable(id="preview", show_cursor=False)
        yield Footer()

    def changed(self, message: DataChanged) -> None:
        if message.what == "models":
            self.redraw()

    def redraw(self) -> None:
        select = self.query_one("#model", Select)
        current = select.value
        models = self.nexus.state.models
        jobs = self.nexus.state.jobs
        options = []
        for m in sorted(models, key=lambda m: -m.created_at):
            job = jobs.get(m.job_id)
            what = f"{m.target}" + (f" — {job.spec.use_case}" if job and job.spec.use_case else "")
            options.append((f"{m.model_id}  {what}", m.model_id))
        select.set_options(options)
        if isinstance(current, str) and any(v == current for _, v in options):
            select.value = current

    @on(Input.Changed, "#input")
    def _input_changed(self, event: Input.Changed) -> None:
        output = self.query_one("#output", Input)
        # Suggest an output name beside the input until the user types one.
        if event.value.endswith(".csv") and (not output.value or output.value.endswith("_predictions.csv")):
            output.value = event.value[: -len(".csv")] + "_predictions.csv"

    @on(Button.Pressed, "#predict")
    def action_predict(self) -> None:
        model = self.query_one("#model", Select).value
        in_path = os.path.expanduser(self.query_one("#input", Input).value.strip())
        out_path = os.path.expanduser(self.query_one("#output", Input).value.strip())
        errors = {
            "model": "" if isinstance(model, str) else "pick a model",
            "input": "" if os.path.isfile(in_path) else (f"no file at {in_path}" if in_path else "choose a CSV file"),
            "output": "" if out_path and os.path.isdir(os.path.dirname(os.path.abspath(out_path)))
            else "choose where to write the predictions",
        }
        for name, text in errors.items():
            self.query_one(f"#{name}-error", Static).update(text)
        if any(errors.values()) or not isinstance(model, str):
            return
        self.query_one("#predict", Button).disabled = True
        self.query_one("#predict-status", Static).update("predicting…")
        self._predict(model, in_path, out_path)

    @work(thread=True, exclusive=True, group="predict")
    def _predict(self, model_id: str, in_path: str, out_path: str) -> None:
        client = self.nexus.client
        try:
            if client is None:
                raise Unreachable("not connected to a node")
            done = client.predict_to_csv(model_id, in_path, out_path)
            with open(out_path, newline="", encoding="utf-8") as f:
                preview = list(islice(csv.reader(f), PREVIEW_ROWS + 1))
        except (Unreachable, RequestFailed, OSError) as e:
            self.app.call_from_thread(self._done, f"prediction failed: {e}", [])
        else:
            status = f"wrote {done.rows} predictions to {out_path}"
            if done.warning:   # predicted all the same, but the user should know
                status += f"\nwarning: {done.warning}"
            if done.outside:   # as the CLI says it on stderr
                status += f"\nnote: {done.outside}"
            self.app.call_from_thread(self._done, status, preview)

    def _done(self, status: str, preview: list[list[str]]) -> None:
        self.query_one("#predict", Button).disabled = False
        self.query_one("#predict-status", Static).update(status)
        table = self.query_one("#preview", DataTable)
        table.clear(columns=True)
        if preview:
            table.add_columns("row", *preview[0])
            for i, row in enumerate(preview[1:]):
                table.add_row(str(i), *row)
