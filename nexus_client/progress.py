"""A one-line progress display for a running job, on stderr, with no extra dependency.

On a terminal the line is redrawn in place (``\\r``) and a ticker keeps the elapsed time
moving between events; anywhere else (a log file, CI) a new line is printed when the
state, the trial count or the best value changes, throttled so a fast job does not flood
the log. The rendering itself is a pure function of a :class:`Snapshot` and a time.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, TextIO

if TYPE_CHECKING:
    from nexus_node._generated.nexus.v1 import nexus_pb2


@dataclass(frozen=True)
class Snapshot:
    """What the progress line shows, taken from a ``nexus.v1.Job``."""

    state: str
    done: int
    running: int
    max_trials: int
    time_budget: float
    started_at: float
    finished_at: float
    metric: str
    best: float | None

    @classmethod
    def of(cls, job: "nexus_pb2.Job") -> "Snapshot":
        # Imported here so that rendering (and its tests) need no generated code.
        from nexus_node._generated.nexus.v1 import nexus_pb2

        t = job.trials
        return cls(
            state=nexus_pb2.JobState.Name(job.state),
            done=t.complete + t.pruned + t.fail,
            running=t.running,
            max_trials=job.spec.max_trials,
            time_budget=job.spec.time_budget_seconds,
            started_at=job.started_at,
            finished_at=job.finished_at,
            metric=job.metric,
            best=job.best_value if job.has_best else None,
        )


def supports_unicode(stream: TextIO) -> bool:
    """Whether block characters can be written to ``stream`` without an encoding error."""
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return encoding.startswith("utf")


def bar(fraction: float, width: int, unicode: bool = True) -> str:
    """A horizontal bar ``width`` characters wide, filled to ``fraction`` (clamped to 0..1)."""
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    full, empty = ("█", "░") if unicode else ("#", "-")
    return full * filled + empty * (width - filled)


def format_duration(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss`` from an hour on)."""
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def elapsed(snap: Snapshot, now: float) -> float:
    """Seconds the job has run: to its finish, or to ``now`` while it runs."""
    if snap.started_at <= 0:
        return 0.0
    end = snap.finished_at if snap.finished_at > 0 else now
    return max(0.0, end - snap.started_at)


def render(snap: Snapshot, now: float, width: int = 24, unicode: bool = True) -> str:
    """The progress line for ``snap`` at unix time ``now``.

    The bar fills with whichever budget is nearer its end (trials or wall time), since
    whichever comes first ends the search.
    """
    spent = elapsed(snap, now)
    fraction = 0.0
    if snap.max_trials > 0:
        fraction = snap.done / snap.max_trials
    if snap.time_budget > 0:
        fraction = max(fraction, spent / snap.time_budget)
    if snap.state == "COMPLETED":
        fraction = 1.0
    trials = f"{snap.done}/{snap.max_trials}" if snap.max_trials > 0 else f"{snap.done}"
    parts = [f"{snap.state:<10} {bar(fraction, width, unicode)} {trials} trials"]
    if snap.running:
        parts.append(f"{snap.running} running")
    if snap.best is not None:
        parts.append(f"best {snap.metric or 'value'} {snap.best:.4g}")
    clock = format_duration(spent)
    if snap.time_budget > 0:
        clock += f"/{format_duration(snap.time_budget)}"
    parts.append(clock)
    return "  ".join(parts)


class ProgressBar:
    """Shows a job's progress on a stream (stderr by default).

    Use as a context manager and feed it jobs with :meth:`update` (e.g. from
    ``NexusClient.wait(job_id, on_event=lambda e: bar.update(e.job))``); leaving the block
    draws the last state and ends the line. ``update`` may be called from any thread: one
    lock orders every write, so the terminal ticker never interleaves with an update.

    Args:
        stream: where to draw; ``sys.stderr`` when ``None``.
        is_tty: redraw in place; defaults to ``stream.isatty()``.
        min_interval: on a non-terminal, the least seconds between two lines (state
            changes are always printed).
        tick: on a terminal, how often the line is redrawn so elapsed time moves.
        clock: unix time source (``time.time``); tests pass their own.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        is_tty: bool | None = None,
        min_interval: float = 2.0,
        tick: float = 0.5,
        width: int = 24,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if is_tty is None else is_tty
        self._unicode = supports_unicode(self._stream)
        self._min_interval = min_interval
        self._tick = tick
        self._width = width
        self._clock = clock
        self._lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._drawn_len = 0
        self._printed_key: tuple | None = None
        self._printed_at = float("-inf")
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> "ProgressBar":
        if self._tty and self._tick > 0:
            self._ticker = threading.Thread(target=self._run_ticker, name="nexus-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, job: "nexus_pb2.Job") -> None:
        """Show ``job``'s progress."""
        self.show(Snapshot.of(job))

    def show(self, snap: Snapshot) -> None:
        """Show a snapshot (what :meth:`update` does after reading the job)."""
        with self._lock:
            self._snap = snap
            self._draw(final=False)

    def close(self) -> None:
        """Stop the ticker, draw the last snapshot if it is not on screen, end the line."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            if self._snap is not None:
                self._draw(final=True)
                if self._tty:
                    self._stream.write("\n")
                    self._stream.flush()
            self._snap = None

    def _run_ticker(self) -> None:
        # A redraw timer, not synchronisation: between events only the clock changes.
        while not self._stop.wait(self._tick):
            with self._lock:
                if self._snap is not None:
                    self._draw(final=False)

    def _draw(self, final: bool) -> None:
        snap = self._snap
        assert snap is not None
        now = self._clock()
        line = render(snap, now, self._width, self._unicode)
        if self._tty:
            # A line longer than the terminal wraps, and "\r" then redraws only its last
            # part: cut it to the width. Pad over the previous, possibly longer, line
            # instead of relying on an ANSI erase sequence a dumb terminal prints literally.
            line = line[: max(20, shutil.get_terminal_size().columns - 1)]
            self._stream.write("\r" + line.ljust(self._drawn_len))
            self._drawn_len = len(line)
            self._stream.flush()
            return
        key = (snap.state, snap.done, snap.best)
        if key == self._printed_key:
            return
        state_changed = self._printed_key is None or self._printed_key[0] != snap.state
        if final or state_changed or now - self._printed_at >= self._min_interval:
            self._stream.write(line + "\n")
            self._stream.flush()
            self._printed_key = key
            self._printed_at = now
