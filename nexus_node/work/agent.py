"""A node's end of its work stream: run what the coordinator assigns, on this node's runners.

Every node runs one :class:`WorkerAgent`. It keeps one ``PeerService.Work`` stream open to
whoever leads (itself included), sends a heartbeat every ``heartbeat`` seconds with its
capacity and the leases it runs, and runs each assignment in a slot of its runner pool. Inputs
arrive as blob hashes; the agent fetches what it lacks from a peer that holds it (hash
checked) before the runner starts. Outputs (prepared shards, a model artifact) go into this
node's blob store and are recorded in the replicated placement, so the coordinator only sees
their hashes. A trial talks to this node's own StorageService, which commits through consensus.

Results outlive broken streams: each is kept (a bounded number) and sent again when the
coordinator assigns the same lease again after a reconnect.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import grpc

from nexus_node.blobs import files
from nexus_node.blobs.replication import MEMBER_BLOB, Placement
from nexus_node.blobs.store import BlobStore
from nexus_node.errors import NexusError
from nexus_node.runner import families
from nexus_node.runner.pool import Runner, RunnerPool
from nexus_node.system import memory_info
from nexus_node.work import wire
from nexus_node.work.dispatcher import HANDED_BACK, WorkSettings
from nexus_node.work.messages import Assignment, CancelTask, Heartbeat, RunningTrial, TaskResult, WorkUp
from nexus_node.work.retries import handed_back_message
from nexus_node.work.scheduler import accept_assignment

log = logging.getLogger(__name__)

#: Blobs a task's localization fetches at once (a large table's arrays are many row shards).
FETCHES_AT_ONCE = 4

#: Results kept for re-sending after a reconnect.
KEPT_RESULTS = 1024
#: Seconds a task waits for this node to apply what the coordinator had applied when it sent it.
CATCH_UP_S = 10.0
#: Seconds a leaving node waits for the coordinator to read its hand-backs and end the stream.
HAND_BACK_S = 5.0


class WorkerAgent:
    """Runs this node's share of the cluster's work.

    Args:
        placement: Where this node records the blobs its tasks produce.
        mesh: The node's mesh (driver for leader and term,
            transport for the stream).
        fetch_blob: Local path of a blob, fetched from a holder first if needed.
        storage: How this node's runners reach its StorageService (host, port, token).
    """

    def __init__(self, *, node_id: str, cluster: str, address: str, pool: RunnerPool, blobs: BlobStore,
                 mesh: Any, placement: Placement, fetch_blob: Callable[[str], Any], storage: dict[str, Any],
                 settings: WorkSettings | None = None) -> None:
        self.node_id, self.cluster, self.address = node_id, cluster, address
        self.pool, self.blobs, self.mesh, self.placement = pool, blobs, mesh, placement
        self.fetch_blob, self.storage = fetch_blob, storage
        self.settings = settings or WorkSettings()
        self.running: dict[str, asyncio.Task[None]] = {}
        self.labels: dict[str, str] = {}
        self._trials: dict[str, RunningTrial] = {}   # lease -> the trial it runs
        self._runners: dict[str, tuple[Runner, int, str]] = {}   # lease -> (runner, task id, kind)
        self._cancelled: set[str] = set()
        self._finished: collections.OrderedDict[str, TaskResult] = collections.OrderedDict()
        self._up: asyncio.Queue[WorkUp | None] | None = None   # None: half-close the stream
        self._newest_term = 0
        self._task: asyncio.Task[None] | None = None
        self._leaving = False
        self.on_change: Callable[[], None] = lambda: None

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"worker-{self.node_id}")

    @property
    def task(self) -> "asyncio.Task[None] | None":
        """The stream loop (the node stops if it ends while the node runs)."""
        return self._task

    async def stop(self, hand_back: bool = True) -> None:
        """Stops taking work. ``hand_back``: tell the coordinator each running task is given
        up (it re-runs them elsewhere at once, without waiting for the grace period)."""
        self._leaving = True
        if self._up is not None:
            # First on the stream, ahead of the hand-backs: a heartbeat of no slots. Without it
            # the coordinator, freed a slot here by a hand-back, gave this node the next trial
            # before it closed its stream, and that trial waited out --grace unanswered.
            self._up.put_nowait(self._heartbeat())
        for task in list(self.running.values()):
            task.cancel()
        for runner, _, _ in self._runners.values():
            runner.kill()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
        if hand_back and self._up is not None and self._task is not None:
            # The hand-backs are the stream's last messages. The stream is half-closed after
            # them and the coordinator ends it once it has read them all: a cancelled call
            # could drop messages the coordinator had not read yet (a hand-back lost so, under
            # load, left its trial to wait out --grace).
            self._up.put_nowait(None)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), HAND_BACK_S)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def running_labels(self) -> list[str]:
        return [self.labels[lease] for lease in self.running if lease in self.labels]

    # ---- the stream ---------------------------------------------------------------------------

    async def _run(self) -> None:
        driver = self.mesh.driver
        while not self._leaving:
            leader = driver.leader
            address = self.address if leader == self.node_id else (driver.peer_address(leader) if leader else None)
            if not address:
                await self._leader_change(leader, 1.0)
                continue
            try:
                await self._session_while_leader(leader, address)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    log.debug("work stream to %s: %s %s", leader, exc.code().name, exc.details())
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the stream is re-opened whatever broke it
                log.exception("work stream to %s failed", leader)
            if self._leaving:
                return   # the coordinator ended the half-closed stream of a leaving node
            # Back off briefly unless the leader changes meanwhile (then reconnect at once).
            await self._leader_change(leader, 0.3)

    async def _session_while_leader(self, leader: str | None, address: str) -> None:
        """Runs the stream to ``leader`` until it ends, or until this node's driver names
        another leader: then it ends the stream at once and the caller opens one to the new
        leader. A coordinator cut off by the network keeps a stream open, unanswered, until
        keepalive gives it up (10-15 s); meanwhile the new coordinator would hear nothing of
        this node, within the window in which it adopts the trials that live nodes run."""
        driver = self.mesh.driver

        def moved() -> bool:
            return driver.leader not in (leader, None)   # None: an election is on, wait for it

        async def until_moved() -> None:
            while not moved():
                with contextlib.suppress(TimeoutError):
                    await driver.wait_for(moved, 60.0)

        session = asyncio.create_task(self._session(address), name="work-session")
        watch = asyncio.create_task(until_moved(), name="work-leader-watch")
        try:
            await asyncio.wait({session, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (session, watch):
                task.cancel()
            await asyncio.gather(session, watch, return_exceptions=True)
        if not session.cancelled():
            session.result()   # the stream ended by itself: raises what broke it
        elif (exc := watch.exception()) is not None:
            raise exc   # MeshStopped: the node stops
        else:
            log.info("work stream to %s ended: the leader is now %s", leader, driver.leader)

    async def _leader_change(self, leader: str | None, timeout: float) -> None:
        """Waits up to ``timeout`` for the leader to change from ``leader``.

        Raises:
            MeshStopped: the driver stopped. It must end :meth:`_run`: ``wait_for`` raises it
                before suspending, so a loop that swallowed it would spin without yielding.
        """
        driver = self.mesh.driver
        with contextlib.suppress(TimeoutError):
            await driver.wait_for(lambda: driver.leader != leader, timeout)

    async def _session(self, address: str) -> None:
        call = wire.open_stream(self.mesh.transport, address)
        up: asyncio.Queue[WorkUp | None] = asyncio.Queue()
        up.put_nowait(self._heartbeat())
        self._up = up
        writer = asyncio.create_task(self._write(call, up), name="work-up")
        beats = asyncio.create_task(self._beat(up), name="work-heartbeat")
        try:
            async for msg in call:
                if isinstance(msg, Assignment):
                    self._assign(msg)
                elif isinstance(msg, CancelTask):
                    self._cancel(msg.lease_id)
        finally:
            if self._up is up:
                self._up = None
            beats.cancel()
            writer.cancel()
            await asyncio.gather(beats, writer, return_exceptions=True)
            call.cancel()

    async def _write(self, call: wire.WorkStream, up: asyncio.Queue[WorkUp | None]) -> None:
        while (msg := await up.get()) is not None:
            await call.write(msg)
        await call.done_writing()

    async def _beat(self, up: asyncio.Queue[WorkUp | None]) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat)   # the heartbeat period
            up.put_nowait(self._heartbeat())

    def _heartbeat(self) -> WorkUp:
        total, free = memory_info()
        info = self.pool.info
        self._newest_term = max(self._newest_term, self.mesh.driver.status().term)
        return WorkUp(cluster=self.cluster, node_id=self.node_id, heartbeat=Heartbeat(
            term=self._newest_term, slots=0 if self._leaving else self.pool.slots,
            task_memory_bytes=self.pool.slots * (self.pool.trial_memory_mb << 20),
            memory_free_bytes=free, memory_total_bytes=total, cores=os.cpu_count() or 1,
            accelerator=str(info.get("cuda_name") or info.get("device") or "cpu"),
            running=tuple(self.running), trials=tuple(t for lease, t in self._trials.items() if lease in self.running)))

    def _send(self, result: TaskResult) -> None:
        if self._up is not None:
            self._up.put_nowait(WorkUp(cluster=self.cluster, node_id=self.node_id, result=result))

    # ---- assignments ----------------------------------------------------------------------------

    def _assign(self, a: Assignment) -> None:
        if a.lease_id in self.running:
            return   # sent again after a reconnect; it runs
        if a.lease_id in self._finished:
            self._send(self._finished[a.lease_id])   # its result may have been lost in transit
            return
        self._newest_term = max(self._newest_term, self.mesh.driver.status().term)
        if self._leaving:
            # Handed back like the tasks it ran (re-run elsewhere, not counted against the
            # configuration); should the stream be half-closed already, the coordinator
            # resolves it so when the stream ends (Dispatcher._left).
            self._send(TaskResult(lease_id=a.lease_id, ok=False, error_kind=HANDED_BACK,
                                  error_message=handed_back_message(self.node_id)))
            return
        if not accept_assignment(self._newest_term, a.term):
            why = f"stale assignment of term {a.term}: this node has seen term {self._newest_term}"
            self._send(TaskResult(lease_id=a.lease_id, ok=False, error_kind="failed_precondition",
                                     error_message=why))
            return
        self._newest_term = a.term
        try:
            task = json.loads(a.task_json)
        except ValueError as exc:
            self._send(TaskResult(lease_id=a.lease_id, ok=False, error_kind="invalid_input",
                                     error_message=f"undecodable task: {exc}"))
            return
        self.labels[a.lease_id] = str(task.get("label", task.get("task", "")))
        if task.get("task") == "trial" and task.get("study_name"):
            self._trials[a.lease_id] = RunningTrial(a.lease_id, str(task["study_name"]),
                                                    int(task.get("trial_number", -1)))
        self.running[a.lease_id] = asyncio.create_task(self._execute(a.lease_id, task, a.log_index),
                                                       name=f"lease-{a.lease_id}")
        self.on_change()

    def _cancel(self, lease_id: str) -> None:
        if lease_id not in self.running:
            return
        self._cancelled.add(lease_id)
        held = self._runners.get(lease_id)
        if held is not None:
            self._stop_runner(*held)

    @staticmethod
    def _stop_runner(runner: Runner, tid: int, kind: str) -> None:
        if kind == "trial":
            runner.cancel(tid)   # the trial stops at its next epoch and records what it reached
        else:
            runner.kill()        # prepare and finalize do not poll; the pool starts a fresh runner

    async def _caught_up(self, index: int) -> None:
        """Waits until this node has applied the log up to ``index`` (the coordinator's when it
        sent the task): a trial's runner reads the trial from this node's copy of the study,
        and the commit of its creation may reach this node a moment after the assignment does.
        After CATCH_UP_S the task runs anyway (and fails with its own message if it must)."""
        driver = self.mesh.driver
        if driver.state.applied_index >= index:
            return
        try:
            await driver.wait_for(lambda: driver.state.applied_index >= index, CATCH_UP_S)
        except TimeoutError:
            log.warning("applied index %d still short of %d after %.0f s; running the task anyway",
                        driver.state.applied_index, index, CATCH_UP_S)

    async def _execute(self, lease_id: str, task: dict[str, Any], log_index: int = 0) -> None:
        kind = str(task.get("task", ""))
        scratch: list[Path] = []
        result: TaskResult | None = None
        slot: int | None = None
        try:
            await self._caught_up(log_index)
            slot = await self.pool.take_slot()
            local = await self._localize(task, scratch)
            runner = await self.pool.runner_for(slot, families.family_of(local))
            runner.current = self.labels.get(lease_id, kind)
            tid, fut = runner.submit(local)
            self._runners[lease_id] = (runner, tid, kind)
            if lease_id in self._cancelled:
                self._stop_runner(runner, tid, kind)
            await runner.drain()
            out = await self._publish(kind, local, await fut)
            result = TaskResult(lease_id=lease_id, ok=True, result_json=json.dumps(out).encode())
        except asyncio.CancelledError:
            if self._leaving:
                result = TaskResult(lease_id=lease_id, ok=False, error_kind=HANDED_BACK,
                                    error_message=handed_back_message(self.node_id))
            raise
        except NexusError as exc:
            result = TaskResult(lease_id=lease_id, ok=False, error_kind=exc.kind, error_message=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug fails the task, not the node
            log.exception("task %s failed", lease_id)
            result = TaskResult(lease_id=lease_id, ok=False, error_kind="internal",
                                error_message=f"{type(exc).__name__}: {exc}")
        finally:
            if slot is not None:
                self.pool.release(slot)
            self.running.pop(lease_id, None)
            self._runners.pop(lease_id, None)
            self._cancelled.discard(lease_id)
            self.labels.pop(lease_id, None)
            self._trials.pop(lease_id, None)
            if result is not None:
                self._finished[lease_id] = result
                while len(self._finished) > KEPT_RESULTS:
                    self._finished.popitem(last=False)
                self._send(result)
            self.on_change()
            # Last, and shielded: a task cancelled as the node leaves still removes its scratch.
            if scratch:
                await asyncio.shield(asyncio.gather(*(files.remove(p) for p in scratch)))

    async def _localize(self, task: dict[str, Any], scratch: list[Path]) -> dict[str, Any]:
        """The task as this node's runner takes it: blob hashes become local paths."""
        local = dict(task)
        local["threads"] = self.pool.threads
        if "files" in task:
            # A few at once, each from holders in an order of its own (BlobSync.fetch_order),
            # so a task's arrays and their row shards stream from several nodes together.
            names = list(task["files"])
            room = asyncio.Semaphore(FETCHES_AT_ONCE)

            async def fetch(sha: str) -> Any:
                async with room:
                    return await self.fetch_blob(sha)

            paths = await asyncio.gather(*(fetch(task["files"][n]) for n in names))
            local["files"] = {name: str(path) for name, path in zip(names, paths)}
        if "csv_sha256" in task:
            local["csv_path"] = str(await self.fetch_blob(local.pop("csv_sha256")))
        kind = task.get("task")
        if kind == "trial":
            local["storage"] = self.storage
            predictions = await asyncio.to_thread(self.blobs.new_temp, ".npy")
            scratch.append(predictions)
            local["predictions_path"] = str(predictions)
        elif kind == "prepare":
            out_dir = await asyncio.to_thread(self.blobs.new_temp_dir, "prep-")
            scratch.append(out_dir)
            local["out_dir"] = str(out_dir)
        elif kind == "select":
            local["library"] = [c for c in [await self._localize_candidate(c) for c in task.get("library") or []] if c]
        elif kind == "refit":
            member = await asyncio.to_thread(self.blobs.new_temp, ".zip")
            scratch.append(member)
            local["artifact_path"] = str(member)
        elif kind == "finalize":
            if task.get("chosen") is not None:
                local["chosen"] = [{**c, "candidate": await self._localize_member(c["candidate"])}
                                   for c in task["chosen"]]
            library = list(task.get("library") or [])
            if self.pool.one_family:
                # A node short of memory keeps one library family per runner: it ensembles
                # only trials of the best one's family, or its runner would hold both.
                best = families.family_of({"task": "finalize", "params": task.get("params")})
                library = [c for c in library
                           if families.family_of({"task": "finalize", "params": c.get("params")}) == best]
            local["library"] = [c for c in [await self._localize_candidate(c) for c in library] if c]
            artifact = await asyncio.to_thread(self.blobs.new_temp, ".zip")
            scratch.append(artifact)
            local["artifact_path"] = str(artifact)
        return local

    async def _localize_candidate(self, candidate: dict[str, Any]) -> dict[str, Any] | None:
        """An ensemble candidate with its predictions fetched; None when they cannot be (the
        ensemble is built without it: it is an option of finalize, never a need)."""
        try:
            path = await self.fetch_blob(str(candidate["predictions_sha256"]))
        except (NexusError, OSError, grpc.RpcError) as e:
            log.warning("trial %s's predictions are not available: %s", candidate.get("trial"), e)
            return None
        local = {k: v for k, v in candidate.items() if k != "predictions_sha256"}
        return {**local, "predictions_path": str(path)}

    async def _localize_member(self, candidate: dict[str, Any]) -> dict[str, Any]:
        """A member refitted on another node, with its file fetched; one that cannot be
        fetched (its node went since) is sent as a candidate to fit: finalize refits it here."""
        sha = candidate.get("member_sha256")
        if not sha:
            return candidate
        local = {k: v for k, v in candidate.items() if k not in ("member_sha256", "node_id")}
        try:
            return {**local, "member_path": str(await self.fetch_blob(str(sha))), "node_id": candidate.get("node_id")}
        except (NexusError, OSError, grpc.RpcError) as e:
            log.warning("trial %s's refitted member is not available (%s): finalize refits it", candidate.get("trial"), e)
            return local

    async def _publish(self, kind: str, local: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        """Outputs into this node's blob store, recorded as held here, and as the task's
        job's (which keeps them while it runs: blobs/gc.py); the result names them by hash."""
        records = self.placement
        owner = str(local.get("job_id") or "")
        if kind == "prepare":
            files = {}
            for name, path in result["files"].items():
                sha, size = await asyncio.to_thread(self.blobs.ingest, Path(path))
                await records.put_blob(sha, size, f"shard:{name}", job_id=owner)
                files[name] = sha
            result = {**result, "files": files}
        elif kind == "trial" and result.get("predictions_sha256"):
            sha, size = await asyncio.to_thread(self.blobs.ingest, Path(local["predictions_path"]))
            # The trial is already finished in the study: predictions that do not match what it
            # recorded are dropped (finalize leaves that trial out of the ensemble), not the trial.
            # Predictions are an option of finalize: failing to record them never fails the trial.
            try:
                if sha == result["predictions_sha256"]:
                    await records.put_blob(sha, size, "predictions", job_id=owner)
                else:
                    log.warning("trial predictions hash to %s, not %s: not kept", sha, result["predictions_sha256"])
                    await asyncio.to_thread(self.blobs.path(sha).unlink, True)
            except Exception as e:  # noqa: BLE001 - see above
                log.warning("trial predictions %s not recorded: %s", sha, e)
        elif kind == "finalize":
            sha, size = await asyncio.to_thread(self.blobs.ingest, Path(local["artifact_path"]))
            await records.put_blob(sha, size, "model", job_id=owner)
            result = {**result, "artifact_sha256": sha, "artifact_bytes": size}
        elif kind == "refit":
            sha, size = await asyncio.to_thread(self.blobs.ingest, Path(local["artifact_path"]))
            await records.put_blob(sha, size, MEMBER_BLOB, job_id=owner)
            result = {**result, "member_sha256": sha, "member_bytes": size}
        return result
