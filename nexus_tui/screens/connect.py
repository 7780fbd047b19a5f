"""Shown when no node answers: says so, lists nodes found by mDNS, asks for an address."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static


class ConnectScreen(ModalScreen[str | None]):
    """Dismissed with the address to try (typed, or picked from the mDNS list)."""

    DEFAULT_CSS = """
    ConnectScreen { align: center middle; }
    ConnectScreen > Vertical { width: 90; height: auto; border: thick $error; background: $surface; padding: 1 2; }
    ConnectScreen OptionList { height: auto; max-height: 8; }
    ConnectScreen #why { color: $text-muted; }
    """

    def __init__(self, address: str, reason: str, found: list[str]) -> None:
        super().__init__()
        self.address, self.reason, self.found = address, reason, found

    def compose(self) -> ComposeResult:
        found = ", ".join(self.found) if self.found else "none"
        with Vertical():
            yield Static(f"No node reachable at {self.address}; found by mDNS: {found}", id="message")
            yield Static(self.reason, id="why")
            if self.found:
                yield OptionList(*self.found, id="found")
            yield Static("Connect to HOST:PORT:")
            yield Input(self.address, id="address")

    @on(Input.Submitted, "#address")
    def _typed(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(event.value.strip())

    @on(OptionList.OptionSelected, "#found")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(str(event.option.prompt))
