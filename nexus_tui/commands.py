"""Command palette entries: one per screen, plus help."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

ENTRIES = (
    ("Cluster: nodes, roles and load", "switch_mode('cluster')"),
    ("Jobs: every job and its progress", "switch_mode('jobs')"),
    ("Submit: start a job on a CSV", "switch_mode('submit')"),
    ("Predict: run a model on a CSV", "switch_mode('predict')"),
    ("Help: keys and screens", "help"),
)


class ScreenCommands(Provider):
    """Opens a screen by name from the command palette (ctrl+p)."""

    async def _run(self, action: str) -> None:
        await self.app.run_action(action)

    async def discover(self) -> Hits:
        for text, action in ENTRIES:
            yield DiscoveryHit(text, partial(self._run, action), help=f"open the {text.split(':')[0]} screen")

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, action in ENTRIES:
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), partial(self._run, action), text=text)
