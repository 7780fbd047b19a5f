"""Help: the screens, the keys and where the data comes from."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# Nexus dashboard

| key | |
|---|---|
| F2 | **Cluster**: every node, its role (★ coordinator), term, heartbeat, slots, memory, trials |
| F3 | **Jobs**: state, progress, best value, elapsed time, constraint engine; Enter opens a job |
| F4 | **Submit**: a CSV (Tab completes paths), the target from its header, use case, budgets |
| F5 | **Predict**: a model, an input CSV, an output path; shows the first predictions |
| ctrl+p | command palette: every screen by name |
| F1 | this help · Escape closes it |
| ctrl+q | quit |

On a job: click a column header (or press **o**) to sort the trials, **x** cancels the job,
Escape goes back.

Updates are pushed by the node (WatchCluster, WatchJob streams). If the node goes away the
title says so and the dashboard reconnects: to the same address when it is back, or to any
other node the cluster listed.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 100; height: auto; max-height: 90%; border: thick $primary; background: $surface; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)
