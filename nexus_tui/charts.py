"""The job screen's charts: optimisation history (plotext) and feature importance (bars)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static
from textual_plotext import PlotextPlot

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_tui.format import bar, best_so_far


class HistoryPlot(PlotextPlot):
    """Each completed trial's value and the best value so far, by trial number."""

    def show(self, trials: list[pb.TrialInfo], metric: str, maximize: bool) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        numbers, values, bests = best_so_far(trials, maximize)
        plt.title(f"optimisation history ({metric or 'value'}, {'higher' if maximize else 'lower'} is better)")
        plt.xlabel("trial")
        if numbers:
            plt.scatter(numbers, values, marker="dot", label="trial")
            plt.plot(numbers, bests, marker="braille", label="best so far")
        self.refresh()


class ImportanceBars(Static):
    """Permutation importance per input column, as horizontal Unicode bars."""

    def show(self, features: list[pb.FeatureImportance], limit: int = 12) -> None:
        if not features:
            self.update(Text("feature importance: not computed yet", style="dim"))
            return
        top = list(features)[:limit]
        width = max(len(f.column) for f in top)
        peak = max((f.importance for f in top), default=0.0) or 1.0
        text = Text("feature importance\n", style="bold")
        for f in top:
            text.append(f"{f.column:>{width}} ")
            text.append(bar(max(0.0, f.importance) / peak, 30), style="cyan")
            text.append(f" {f.importance:.3f}\n")
        self.update(text)
