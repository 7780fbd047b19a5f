"""The progress line: pure rendering, in-place redraws on a terminal, throttled lines elsewhere."""

from __future__ import annotations

import io
import threading

from nexus_client.progress import ProgressBar, Snapshot, bar, format_duration, render
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb

T0 = 1_700_000_000.0


def snap(state="SEARCHING", done=0, best=None, max_trials=24, time_budget=0.0, running=0, finished_at=0.0):
    return Snapshot(state=state, done=done, running=running, max_trials=max_trials, time_budget=time_budget,
                    started_at=T0, finished_at=finished_at, metric="r2", best=best)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_bar_fills_and_clamps():
    assert bar(0.5, 10) == "█" * 5 + "░" * 5
    assert bar(2.0, 4, unicode=False) == "####"
    assert bar(-1, 4, unicode=False) == "----"


def test_format_duration():
    assert format_duration(0) == "0:00"
    assert format_duration(100) == "1:40"
    assert format_duration(3725) == "1:02:05"


def test_render_shows_state_trials_best_and_time():
    line = render(snap(done=6, best=0.85123, running=2), now=T0 + 30, width=8, unicode=False)
    assert line.startswith("SEARCHING  ##------ 6/24 trials")
    assert "2 running" in line and "best r2 0.8512" in line and line.endswith("0:30")


def test_the_nearer_budget_drives_the_bar():
    line = render(snap(done=1, time_budget=100), now=T0 + 75, width=4, unicode=False)
    assert "###-" in line and line.endswith("1:15/1:40")


def test_render_without_a_trial_budget_counts_trials_only():
    line = render(snap(done=3, max_trials=0), now=T0, unicode=False)
    assert " 3 trials" in line and "/" not in line.split("trials")[0].split()[-1]


def test_finished_jobs_stop_the_clock_and_fill_the_bar():
    line = render(snap(state="COMPLETED", done=5, finished_at=T0 + 42), now=T0 + 1000, width=4, unicode=False)
    assert "####" in line and line.endswith("0:42")


def test_snapshot_of_a_job():
    job = pb.Job(state=pb.SEARCHING, metric="r2", best_value=0.0, has_best=True, started_at=T0,
                 trials=pb.TrialCounts(complete=2, pruned=1, fail=1, running=3),
                 spec=pb.JobSpec(max_trials=10, time_budget_seconds=60))
    s = Snapshot.of(job)
    assert (s.state, s.done, s.running, s.max_trials, s.time_budget, s.best) == ("SEARCHING", 4, 3, 10, 60, 0.0)
    assert Snapshot.of(pb.Job()).best is None


def test_a_log_gets_one_line_per_change_throttled_but_never_loses_a_state():
    out, clock = io.StringIO(), Clock()
    progress = ProgressBar(out, is_tty=False, min_interval=5, clock=clock)
    with progress:
        progress.show(snap(state="PENDING"))
        progress.show(snap(state="PENDING"))            # no change: nothing
        progress.show(snap(done=1))                     # state change: printed at once
        clock.now += 1
        progress.show(snap(done=2))                     # within the interval: held back
        clock.now += 5
        progress.show(snap(done=3, best=0.7))           # interval passed: printed
        progress.show(snap(done=4, best=0.8))           # held back ...
    lines = out.getvalue().splitlines()                 # ... and printed when closed
    assert [line.split()[0] for line in lines] == ["PENDING", "SEARCHING", "SEARCHING", "SEARCHING"]
    assert ["0/24" in lines[0], "1/24" in lines[1], "3/24" in lines[2], "4/24" in lines[3]] == [True] * 4
    assert "\r" not in out.getvalue()


def test_a_terminal_is_redrawn_in_place_and_the_line_ended_on_close():
    out, clock = io.StringIO(), Clock()
    with ProgressBar(out, is_tty=True, tick=0, clock=clock) as progress:
        progress.show(snap(done=1, running=3, best=0.123456))
        progress.show(snap(done=2))
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n")
    first, second, last = text[1:].rstrip("\n").split("\r")
    # The shorter line is padded over the longer one it replaces.
    assert len(second) == len(first) and "2/24" in second and last.rstrip() == second.rstrip()


def test_a_terminal_line_is_cut_to_the_terminal_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    out = io.StringIO()
    with ProgressBar(out, is_tty=True, tick=0, clock=Clock()) as progress:
        progress.show(snap(done=1, running=3, best=0.123456))
    drawn = out.getvalue().strip("\r\n").split("\r")
    assert [len(line) for line in drawn] == [39, 39] and drawn[0].startswith("SEARCHING")


class _WatchedStream(io.StringIO):
    """A terminal-like stream that signals once ``needle`` has been written."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.seen = threading.Event()

    def write(self, s: str) -> int:
        n = super().write(s)
        if self.needle in s:
            self.seen.set()
        return n

    def isatty(self) -> bool:
        return True


def test_the_terminal_ticker_moves_the_clock_between_events():
    out, clock = _WatchedStream("1:01"), Clock()
    with ProgressBar(out, tick=0.01, clock=clock) as progress:
        progress.show(snap(done=1))
        clock.now += 61
        # No event follows: only the ticker can draw the new time before the bar closes.
        assert out.seen.wait(10), "the ticker did not redraw"
