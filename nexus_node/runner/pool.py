"""Node side of the runners: start them, hand them tasks, replace the ones that die.

Runners are started lazily, on the first task that needs one, and then kept: process
start-up and the torch import (~1.4 s) are paid once per slot, not once per trial. A pool that
keeps one library family per runner (:mod:`nexus_node.runner.families`, for nodes short of
memory) replaces a slot's idle runner when the next task needs the other family.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
from typing import Any, AsyncIterator, Callable

from nexus_node.errors import NexusError, error_from_kind
from nexus_node.runner import families

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], None]
START_TIMEOUT = 120.0   # importing torch on a slow disk takes seconds, never minutes


class RunnerDied(NexusError):
    """The runner process exited while it had a task (killed for memory, crashed)."""

    kind = "internal"


class Runner:
    """One child process executing one task at a time."""

    def __init__(self, name: str, threads: int, env: dict[str, str] | None = None, trial_memory_mb: int = 0,
                 family: str = families.ANY) -> None:
        self.name = name
        self.threads = threads
        self.family = family
        self.trial_memory_mb = trial_memory_mb
        self._env = env
        self._proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[asyncio.Future[dict[str, Any]], EventHandler | None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.info: dict[str, Any] = {}
        self.current: str = ""   # what the runner is doing, for the cluster view
        self._exiting = False    # the runner said it is ending (after a task ran out of memory)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and not self._exiting

    async def start(self) -> None:
        env = dict(os.environ if self._env is None else self._env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nexus_node.runner.main", "--threads", str(self.threads),
            "--trial-memory-mb", str(self.trial_memory_mb), "--family", self.family,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            # A task's training loop can take a large line (predictions); the default 64 KiB
            # limit would cut it.
            limit=256 << 20,
        )
        assert self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), START_TIMEOUT)
        except asyncio.TimeoutError:
            self._proc.kill()
            await self._proc.wait()
            raise RunnerDied(f"runner {self.name} did not start within {START_TIMEOUT:.0f} s") from None
        if not line:
            code = await self._proc.wait()
            raise RunnerDied(f"runner {self.name} exited during start-up (status {code})")
        hello = json.loads(line)
        self.info = hello.get("info", {})
        self._reader = asyncio.create_task(self._read_loop(), name=f"runner-{self.name}-reader")

    async def _read_loop(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            while line := await self._proc.stdout.readline():
                msg = json.loads(line)
                tid = int(msg.get("id", 0))
                waiter = self._waiting.get(tid)
                if waiter is None:
                    continue
                fut, on_event = waiter
                if "event" in msg:
                    if on_event is not None:
                        on_event(msg["event"])
                elif msg.get("ok"):
                    self._waiting.pop(tid, None)
                    if not fut.done():
                        fut.set_result(msg["result"])
                else:
                    if msg.get("exiting"):
                        self._exiting = True   # so the pool replaces it, not hands it a task
                    self._waiting.pop(tid, None)
                    err = msg.get("error", {})
                    if not fut.done():
                        fut.set_exception(error_from_kind(err.get("kind", "internal"), err.get("message", "")))
        except BaseException:
            # A protocol we cannot read (an over-long line, bad JSON) leaves the runner's
            # state unknown: end it, so waiters fail now instead of hanging.
            self._proc.kill()
            raise
        finally:
            code = await self._proc.wait()
            reason = _exit_reason(code)
            for fut, _ in self._waiting.values():
                if not fut.done():
                    fut.set_exception(RunnerDied(f"runner process {reason}"))
            self._waiting.clear()

    def submit(self, task: dict[str, Any], on_event: EventHandler | None = None) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        """Send a task without waiting; returns its id (usable for ``cancel`` at once) and
        a future for its result."""
        if not self.alive:
            raise RunnerDied(f"runner {self.name} is not running")
        assert self._proc is not None and self._proc.stdin is not None
        tid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[tid] = (fut, on_event)
        try:
            self._proc.stdin.write(json.dumps({"id": tid, "task": task}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError) as e:
            self._waiting.pop(tid, None)
            raise RunnerDied(f"runner {self.name} stopped taking tasks: {e}") from None
        return tid, fut

    async def call(self, task: dict[str, Any], on_event: EventHandler | None = None) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        """Send a task; returns its id and a future for its result."""
        tid, fut = self.submit(task, on_event)
        await self.drain()
        return tid, fut

    async def drain(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as e:
            raise RunnerDied(f"runner {self.name} stopped taking tasks: {e}") from None

    async def run(self, task: dict[str, Any], on_event: EventHandler | None = None) -> dict[str, Any]:
        _, fut = await self.call(task, on_event)
        return await fut

    def cancel(self, task_id: int) -> None:
        if self.alive and self._proc is not None and self._proc.stdin is not None:
            self._proc.stdin.write(json.dumps({"cancel": task_id}).encode() + b"\n")

    async def stop(self, grace: float = 5.0) -> None:
        if self._proc is None:
            return
        if self._proc.returncode is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()   # EOF: the runner finishes and exits
            try:
                await asyncio.wait_for(self._proc.wait(), grace)
            except asyncio.TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader

    def kill(self) -> None:
        if self.alive and self._proc is not None:
            self._proc.kill()


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        sig = -code
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = " (killed: out of memory?)" if sig == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {code}"


class RunnerPool:
    """A fixed number of slots, each backed by a long-lived runner.

    ``acquire()`` waits for a free slot (FIFO, so jobs share slots in arrival order) and
    yields a live runner, starting or replacing its process as needed.
    """

    def __init__(self, name: str, slots: int, threads: int, trial_memory_mb: int = 0,
                 one_family: bool = False) -> None:
        self.name = name
        self.slots = slots
        self.threads = threads
        self.trial_memory_mb = trial_memory_mb
        self.one_family = one_family
        self._info: dict[str, Any] = {}
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for i in range(slots):
            self._free.put_nowait(i)
        self._runners: dict[int, Runner] = {}
        self._start_locks = [asyncio.Lock() for _ in range(slots)]
        self._closed = False

    @property
    def busy(self) -> int:
        return self.slots - self._free.qsize()

    @property
    def info(self) -> dict[str, Any]:
        """What the latest runner that loaded torch said about it (device, versions)."""
        for r in self._runners.values():
            if r.info.get("device"):
                self._info = r.info
        return self._info

    async def take_slot(self) -> int:
        """Wait for a free slot. Cancelling the wait is safe: no slot is lost."""
        return await self._free.get()

    def release(self, slot: int) -> None:
        if slot in self._runners:
            self._runners[slot].current = ""
        self._free.put_nowait(slot)

    async def runner_for(self, slot: int, family: str = families.ANY) -> Runner:
        """The live runner of a taken slot for a task of ``family``, started or replaced if
        needed."""
        if self._closed:
            raise NexusError("node is shutting down")
        return await self._ensure(slot, family)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Runner]:
        slot = await self.take_slot()
        try:
            yield await self.runner_for(slot)
        finally:
            self.release(slot)

    async def _ensure(self, slot: int, family: str) -> Runner:
        if not self.one_family:
            family = families.ANY
        async with self._start_locks[slot]:
            r = self._runners.get(slot)
            if r is not None and r.alive and family in (families.ANY, r.family):
                return r
            if r is not None:
                if r.alive:
                    log.info("runner %s (%s) makes way for one for %s", r.name, r.family, family)
                else:
                    log.warning("replacing dead runner %s", r.name)
                await r.stop()
            r = Runner(f"{self.name}-{slot}", self.threads, trial_memory_mb=self.trial_memory_mb,
                       family=families.TABLES if family == families.ANY and self.one_family else family)
            await r.start()
            self._runners[slot] = r
            return r

    async def close(self, kill: bool = False) -> None:
        """Stop every runner. ``kill``: at once, abandoning their tasks (node shutdown:
        unfinished work is redone on restart); otherwise after their current task."""
        self._closed = True
        if kill:
            for r in self._runners.values():
                r.kill()
        await asyncio.gather(*(r.stop() for r in self._runners.values()), return_exceptions=True)
        self._runners.clear()
