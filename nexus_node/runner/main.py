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
from typing import Any, BinaryIO

from nexus_node.errors import NexusError


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out = _Writer(proto)

    # Thread limits must be set before the numeric libraries start their pools.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    from nexus_node.runner import tasks  # the heavy import, paid once per runner

    import torch

    torch.set_num_threads(args.threads)
    out.send({"ready": True, "info": tasks.run_task({"task": "ping"}, _Context(0, out, set()))})

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
