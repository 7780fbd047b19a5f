"""Path completion for inputs (Textual's suggester) and reading a CSV header."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from textual.suggester import Suggester


class PathSuggester(Suggester):
    """Suggests the first file or directory that completes what was typed (``~`` expands);
    directories end with a slash so the next completion continues inside them."""

    def __init__(self, suffix: str = "") -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.suffix = suffix

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        expanded = os.path.expanduser(value)
        directory, prefix = os.path.split(expanded)
        try:
            entries = sorted(os.scandir(directory or "."), key=lambda e: e.name)
        except OSError:
            return None
        for entry in entries:
            if not entry.name.startswith(prefix) or entry.name == prefix or entry.name.startswith("."):
                continue
            is_dir = entry.is_dir()
            if not is_dir and self.suffix and not entry.name.endswith(self.suffix):
                continue
            return value + entry.name[len(prefix):] + ("/" if is_dir else "")
        return None


def csv_header(path: str) -> list[str] | None:
    """The header row of a CSV file, or None if it is not a readable file with one."""
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        return None
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            with open(p, newline="", encoding=encoding) as f:
                row = next(csv.reader(f), None)
            return [c.strip() for c in row if c.strip()] if row else None
        except UnicodeDecodeError:
            continue
        except (OSError, csv.Error):
            return None
    return None
