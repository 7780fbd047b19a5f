"""The runner child process: ``python -m nexus_node.runner.main --threads N``.

Protocol (JSON lines):
  stdin  (node -> runner): ``{"id": n, "task": {...}}``, ``{"cancel": n}``
  proto fd (runner -> node): ``{"ready": true, "info": {...}}`` once imports are done, then per
  task ``{"id": n, "event": {...}}`` (any number) and one ``{"id": n, "ok": true, "result":
  {...}}`` or ``{"id": n, "ok": false, "error": {"kind": ..., "message": ...}}``.

The protocol uses a private duplicate of stdout; fd 1 itself is pointed at stderr, so a
library that prints cannot corrupt the stream. stdin reaching EOF means the node is gone (or
stopping): the runner exits at once, abandoning any task, rather than outlive it. Tasks run one at a time on the main thread; a
reader thread takes cancellations while a task runs.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import traceback
from typing import Any, BinaryIO, Callable

from nexus_node.errors import NexusError
from nexus_node.runner import families, memory
from nexus_node.runner.memory import anon_rss
from nexus_node.system import give_back_freed_memory


class _Context:
    def __init__(self, task_id: int, out: "_Writer", cancelled: set[int]) -> None:
        self._id, self._out, self._cancelled = task_id, out, cancelled

    def cancelled(self) -> bool:
        return self._id in self._cancelled

    def emit(self, event: dict[str, Any]) -> None:
        self._out.send({"id": self._id, "event": event})


class _Writer:
    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._lock = threading.Lock()

    def send(self, msg: dict[str, Any]) -> None:
        line = json.dumps(msg, allow_nan=False, default=_jsonable).encode() + b"\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()


def _jsonable(o: Any) -> Any:
    # numpy scalars sneak into results; make them plain numbers.
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class MemoryWatch:
    """Watches a task's memory from a side thread and calls ``on_exceed(used)`` once when
    the task has added more than ``budget_mb`` of resident anonymous memory.

    A watch rather than an rlimit: RLIMIT_DATA/AS count reserved address space (every
    thread's 8 MB stack, allocator arenas), so a budget that stops a wide network also
    stops gRPC from starting a thread. Resident memory is what starves the other trials.
    A single allocation larger than the machine's free memory can still outrun the watch;
    then the kernel's OOM killer ends the runner, and the node fails the trial saying so.

    How often it looks depends on the room left: every :data:`INTERVAL` near the budget, up
    to every :data:`MAX_INTERVAL` far from it, so that a trial could not grow from the last
    look past its budget faster than :data:`GROWTH` bytes per second. Each look wakes a
    thread that needs the GIL from the training loop: at a fixed 20 ms, the runner spent 3%
    more CPU on the same training (``scripts/bench overhead``, same-run A/B).
    """

    INTERVAL = 0.02
    MAX_INTERVAL = 0.5
    GROWTH = 2 << 30

    def __init__(self, budget_mb: int, on_exceed: Callable[[int], None]) -> None:
        self.budget = budget_mb << 20
        self.on_exceed = on_exceed
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "MemoryWatch":
        if self.budget > 0:
            base = anon_rss()
            self._thread = threading.Thread(target=self._watch, args=(base,), daemon=True, name="memory-watch")
            self._thread.start()
        return self

    def _watch(self, base: int) -> None:
        wait = self.INTERVAL
        while not self._done.wait(wait):
            used = anon_rss() - base
            if used > self.budget:
                self.on_exceed(used)
                return
            wait = min(self.MAX_INTERVAL, max(self.INTERVAL, (self.budget - used) / self.GROWTH))

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


def _over_budget(out: "_Writer", tid: int, used: int, budget_mb: int) -> None:
    out.send({"id": tid, "ok": False, "exiting": True, "error": {"kind": "internal", "message": (
        f"out of memory: the trial used {used >> 20} MB, over its budget of {budget_mb} MB; "
        "a smaller batch size or width fits (or give trials more with nexus-node --trial-memory-mb)")}})
    # The training thread cannot be interrupted safely mid-operation: end the runner (the
    # node starts a fresh one for the next task) before it takes the machine's memory.
    sys.stderr.flush()
    os._exit(3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--trial-memory-mb", type=int, default=0,
                    help="anonymous memory a trial may add to the runner (0: no budget)")
    ap.add_argument("--family", choices=(families.ANY, families.NETWORKS, families.TABLES), default=families.ANY,
                    help="the library family this runner is for (runner/families.py): a tables "
                         "runner does not load torch at start")
    args = ap.parse_args(argv)

    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out = _Writer(proto)

    # Thread limits must be set before the numeric libraries start their pools.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    from nexus_node.runner import tasks  # the heavy import, paid once per runner

    memory.set_budget(args.trial_memory_mb)   # what a trial sizes its rows by (runner/arrays.py)

    # Warming torch up here (not in the first trial) keeps trials' clocks comparable; a
    # runner for tables never needs it.
    ping = {"task": "ping", "warm_up": args.family != families.TABLES}
    out.send({"ready": True, "info": tasks.run_task(ping, _Context(0, out, set()))})

    inbox: "queue.Queue[dict[str, Any] | None]" = queue.Queue()
    cancelled: set[int] = set()

    def read_stdin() -> None:
        for raw in sys.stdin.buffer:
            msg = json.loads(raw)
            if "cancel" in msg:
                cancelled.add(int(msg["cancel"]))
            else:
                inbox.put(msg)
        # EOF: the node stopped us or died. Nobody will read a result, and a task left
        # running would write into a study or a data dir a restarted node now owns.
        sys.stderr.flush()
        os._exit(0)

    threading.Thread(target=read_stdin, daemon=True, name="runner-stdin").start()
    while (msg := inbox.get()) is not None:
        tid = int(msg["id"])
        try:
            budget = args.trial_memory_mb if msg["task"].get("task") == "trial" else 0
            memory.begin_task()   # what the task adds from here is what it sizes its rows by
            with MemoryWatch(budget, lambda used: _over_budget(out, tid, used, budget)):
                result = tasks.run_task(msg["task"], _Context(tid, out, cancelled))
            out.send({"id": tid, "ok": True, "result": result})
        except NexusError as e:
            out.send({"id": tid, "ok": False, "error": {"kind": e.kind, "message": str(e)}})
        except MemoryError:
            out.send({"id": tid, "ok": False, "error": {"kind": "internal", "message": "out of memory"}})
        except Exception as e:  # a task bug must fail the task, not the runner
            traceback.print_exc()
            out.send({"id": tid, "ok": False, "error": {"kind": "internal", "message": f"{type(e).__name__}: {e}"}})
        cancelled.discard(tid)
        give_back_freed_memory()   # an idle runner does not hold its last task's peak
    return 0


if __name__ == "__main__":
    sys.exit(main())
