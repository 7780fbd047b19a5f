"""What every dashboard screen shares: header, footer and redraw on data changes."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual import on
from textual.screen import Screen

from nexus_tui.messages import DataChanged

if TYPE_CHECKING:
    from nexus_tui.app import NexusApp


class DataScreen(Screen[None]):
    """A screen that draws from the app's state: fully when it is shown, then on each
    :class:`DataChanged` the app sends while it is the current screen."""

    @property
    def nexus(self) -> "NexusApp":
        return cast("NexusApp", self.app)

    ready = False   # set once the whole widget tree exists (after the first refresh)

    def redraw(self) -> None:
        """Draw everything from the state."""

    def _first_draw(self) -> None:
        self.ready = True
        self.redraw()

    def on_mount(self) -> None:
        # Widgets nested in containers may mount after the screen's own Mount event;
        # drawing after the first refresh finds all of them.
        self.call_after_refresh(self._first_draw)

    def changed(self, message: DataChanged) -> None:
        """Apply one change; by default, a full redraw."""
        self.redraw()

    def on_screen_resume(self) -> None:
        if self.ready:
            self.redraw()

    @on(DataChanged)
    def _data_changed(self, message: DataChanged) -> None:
        # A change can reach a screen that was just pushed and is not composed yet; its
        # on_mount draws everything from the state anyway.
        if self.ready:
            self.changed(message)
