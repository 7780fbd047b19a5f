"""The coordinator's end of the work streams: which node runs what, and what came of it.

Every node (the coordinator too, over loopback) holds one ``PeerService.Work`` stream to the
coordinator. Up come heartbeats (slots, task memory, the leases the node runs) and task results;
down go assignments and cancellations. The decisions are :mod:`nexus_node.work.scheduler`'s pure
functions; this module is their I/O: it keeps the :class:`~nexus_node.work.scheduler.Schedule`, feeds
it heartbeats and the clock, and turns its answers into messages and futures.

A job driver asks for a slot with :meth:`Dispatcher.reserve` (fair share and memory-aware
placement decide which job gets the next free slot, and where), then hands the task over with
:meth:`Dispatcher.send` and awaits its :class:`Outcome`. The outcome is the node's result, or
*lost*: the node went silent past ``grace`` (or handed its work back as it left), the lease is
revoked, and any late result under it is refused, so a study never counts a trial twice.

Delivery: within one stream messages are ordered and reliable. When a stream breaks, an
assignment or a result may be lost in transit, so a node's unresolved assignments are sent again
when it reconnects; the node ignores one it runs, answers one it finished with the stored result,
and starts one it never got. A lease a node runs that this coordinator does not hold (revoked, or
granted by an earlier coordinator) is cancelled when the node's heartbeat lists it, except a
trial of a study this coordinator adopts from (:meth:`Dispatcher.claims_for`): its claim is
held until the job's search decides (:mod:`nexus_node.work.adoption`), and an adopted trial
goes on under the lease its node already runs it under.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Callable, Iterable

from nexus_node.errors import FailedPrecondition
from nexus_node.work.adoption import Claim
from nexus_node.work.messages import Assignment, CancelTask, Heartbeat, TaskResult, WorkDown, WorkUp
from nexus_node.work.retries import handed_back_message
from nexus_node.work.scheduler import (
    Lease,
    NodeView,
    Schedule,
    TrialRequest,
    accept_result,
    cancel_job,
    declare_dead,
    grant,
    place,
    revive,
)

log = logging.getLogger(__name__)

#: The error kind of a result a leaving node sends for each task it gives up (SIGTERM).
HANDED_BACK = "handed_back"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of a task sent to a node."""

    ok: bool
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    error_kind: str = ""
    message: str = ""
    lost: bool = False     # never finished: its node died or left, or its lease was revoked
    handed_back: bool = False   # lost because its node left (SIGTERM): not counted against it
    node_id: str = ""


@dataclasses.dataclass
class WorkSettings:
    grace: float = 5.0           # seconds of heartbeat silence after which a node is dead
    max_retries: int = 2         # re-runs of a configuration whose nodes died (work.retries)
    heartbeat: float = 1.0       # seconds between a node's heartbeats
    check_interval: float = 0.2  # how often the coordinator looks for silent nodes


class _Session:
    """A node as the coordinator knows it: its last heartbeat and its open stream, if any."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.view: NodeView | None = None
        self.heartbeat = Heartbeat()
        self.outbox: asyncio.Queue[WorkDown | None] | None = None   # None: no open stream

    def push(self, msg: WorkDown | None) -> None:
        """Queue ``msg`` on the open stream, if any; ``None`` ends the stream."""
        if self.outbox is not None:
            self.outbox.put_nowait(msg)


class Dispatcher:
    """Work placement for one coordinator term.

    Args:
        term: The term this coordinator leads in; every assignment carries it.
        on_change: Called when slots are taken or freed (the cluster view changed).
        clock: Monotonic seconds (tests pass their own).
        applied_index: The log index a node must have applied before it starts a task (the
            coordinator's newest own write); every assignment carries it.
        catch_up: Called with a node's id as a task is sent to it: the node is sent the log
            it lacks now (the coordinator's private writes may reach it late otherwise).
        adopt_from: The studies whose running trials this coordinator may adopt (the jobs it
            resumes mid-search): their trials' leases, named in heartbeats, are held as claims
            instead of cancelled until :meth:`claims_for` and :meth:`settle_claims`.
        adopt_window: Seconds from :meth:`start` that :meth:`claims_for` listens for claims
            (a node reconnects and sends its first heartbeat as soon as it learns the leader).
    """

    def __init__(self, term: int, settings: WorkSettings | None = None,
                 on_change: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 applied_index: Callable[[], int] = lambda: 0,
                 catch_up: Callable[[str], None] = lambda node_id: None,
                 adopt_from: Iterable[str] = (), adopt_window: float = 0.0) -> None:
        self.term = term
        self._applied_index = applied_index
        self._catch_up = catch_up
        self.settings = settings or WorkSettings()
        self.schedule = Schedule()
        self._on_change = on_change or (lambda: None)
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        self._waiting: dict[str, list[tuple[TrialRequest, asyncio.Future[Lease]]]] = {}
        self._rank: dict[str, float] = {}
        self._results: dict[str, asyncio.Future[Outcome]] = {}
        self._sent: dict[str, WorkDown] = {}
        self._seq = itertools.count(1)
        self._watch: asyncio.Task[None] | None = None
        self._closed = False
        self._adopting = set(adopt_from)
        self._adopt_window = adopt_window
        self._adopt_until = 0.0
        self._claims: dict[str, tuple[str, Claim]] = {}   # lease -> (study, claim)

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._adopt_until = self._clock() + self._adopt_window
        self._watch = asyncio.create_task(self._watch_heartbeats(), name="dispatch-watch")

    async def stop(self) -> None:
        """End every stream (nodes reconnect to the next coordinator) and every wait."""
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        for session in self._sessions.values():
            session.push(None)
            session.outbox = None
        for waiting in self._waiting.values():
            for _, fut in waiting:
                fut.cancel()
        self._waiting.clear()
        for result in self._results.values():
            if not result.done():
                result.set_result(Outcome(False, lost=True, message="the coordinator stepped down"))
        self._results.clear()

    # ---- job side ---------------------------------------------------------------------------

    async def reserve(self, job_id: str, memory: int, rank: float) -> Lease:
        """Waits until this job gets a slot (its fair share, on a node with the memory) and
        returns the lease. ``rank`` orders jobs that have waited equally (submission time).

        Raises:
            FailedPrecondition: no node of the cluster could ever hold ``memory``.
        """
        if self._closed:
            raise FailedPrecondition("this node no longer coordinates")
        fut: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        request = TrialRequest(job_id, next(self._seq), "", memory)
        self._waiting.setdefault(job_id, []).append((request, fut))
        self._rank.setdefault(job_id, rank)
        self._pump()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())
            else:
                self._drop_waiting(job_id, fut)
            raise

    def send(self, lease: Lease, task: dict[str, Any], config_key: str = "",
             trial_number: int | None = None) -> asyncio.Future[Outcome]:
        """Assigns ``task`` under ``lease``; the future resolves with its outcome."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        held = self.schedule.leases.get(lease.lease_id)
        if held is None:
            fut.set_result(Outcome(False, lost=True, message="the lease was revoked before its task was sent",
                                   node_id=lease.node_id))
            return fut
        # The configuration is known only now (the trial was asked after the slot was granted).
        request = dataclasses.replace(held.request, config_key=config_key or held.request.config_key,
                                      trial_number=held.request.trial_number if trial_number is None else trial_number)
        self.schedule.leases[lease.lease_id] = dataclasses.replace(held, request=request)
        self._results[lease.lease_id] = fut
        msg = Assignment(lease_id=lease.lease_id, term=self.term, task_json=json.dumps(task).encode(),
                         log_index=self._applied_index())
        self._sent[lease.lease_id] = msg
        self._catch_up(lease.node_id)
        self._sessions[lease.node_id].push(msg)
        return fut

    # ---- adoption ----------------------------------------------------------------------------

    def now(self) -> float:
        """This dispatcher's clock (claims are stamped with it)."""
        return self._clock()

    async def claims_for(self, study_name: str) -> list[Claim]:
        """The claims on ``study_name``'s trials, once the adoption window has passed."""
        remaining = self._adopt_until - self._clock()
        if remaining > 0:
            await asyncio.sleep(remaining)   # the window nodes have to reconnect and claim
        return [c for study, c in self._claims.values() if study == study_name]

    def adopt(self, claim: Claim, job_id: str, memory: int, task: dict[str, Any],
              config_key: str = "") -> tuple[Lease, asyncio.Future[Outcome]]:
        """Takes over the trial ``claim`` names under its own lease: its node runs on, and the
        assignment sent now is one it ignores while it runs the task (or answers with the
        result it kept, had it finished meanwhile)."""
        self._claims.pop(claim.lease_id, None)
        lease = Lease(claim.lease_id, TrialRequest(job_id, claim.trial_number, config_key, memory),
                      claim.node_id, self.term, self._clock())
        if claim.node_id in self.schedule.dead or self._closed or claim.node_id not in self._sessions:
            fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            why = ("this node no longer coordinates" if self._closed else
                   f"node {claim.node_id} went silent before its trial was adopted")
            fut.set_result(Outcome(False, lost=True, message=why, node_id=claim.node_id))
            return lease, fut
        self.schedule.leases[lease.lease_id] = lease
        self._on_change()
        return lease, self.send(lease, task, config_key, claim.trial_number)

    def settle_claims(self, study_name: str, refused: Iterable[tuple[Claim, str]] = ()) -> None:
        """The search of ``study_name`` decided: each ``refused`` claim's task is cancelled on
        its node, as is any claim left (or made later) on the study."""
        self._adopting.discard(study_name)
        for claim, reason in refused:
            self._refuse(claim.node_id, claim.lease_id, reason)
        for lease_id, (study, claim) in list(self._claims.items()):
            if study == study_name:
                self._refuse(claim.node_id, lease_id, "its trial was failed as lost: nobody adopted it in time")
        self._pump()   # the slots refused claims held are free

    def _refuse(self, node_id: str, lease_id: str, reason: str) -> None:
        self._claims.pop(lease_id, None)
        session = self._sessions.get(node_id)
        if session is not None:
            session.push(CancelTask(lease_id=lease_id, reason=reason))

    def release(self, lease: Lease) -> None:
        """Gives back a lease whose task was never sent."""
        if self.schedule.leases.pop(lease.lease_id, None) is not None:
            self._pump()

    def stop_task(self, lease_id: str, reason: str) -> None:
        """Asks the node to stop a task early (a job's time budget ran out); its result still
        comes back (a trial stops at its next epoch and records what it reached)."""
        lease = self.schedule.leases.get(lease_id)
        if lease is not None:
            self._sessions[lease.node_id].push(CancelTask(lease_id=lease_id, reason=reason))

    def cancel_job(self, job_id: str, reason: str = "the job was cancelled") -> None:
        """Revokes the job's leases (their slots are free at once) and stops its tasks."""
        for lease in cancel_job(self.schedule, job_id):
            self._sessions[lease.node_id].push(CancelTask(lease_id=lease.lease_id, reason=reason))
            self._resolve(lease.lease_id, Outcome(False, lost=True, message=reason, node_id=lease.node_id))
        for _, fut in self._waiting.pop(job_id, []):
            fut.cancel()
        self._pump()

    def nodes(self) -> list[NodeView]:
        """Nodes with an open stream that are not dead, as last heard."""
        return [s.view for s in self._sessions.values()
                if s.view is not None and s.outbox is not None and s.node_id not in self.schedule.dead]

    def _free_views(self) -> list[NodeView]:
        """:meth:`nodes` less the slots that held claims take: a trial that may be adopted
        runs there, though no lease of this coordinator says so yet."""
        held: dict[str, int] = {}
        for _, claim in self._claims.values():
            held[claim.node_id] = held.get(claim.node_id, 0) + 1
        return [dataclasses.replace(v, slots=max(0, v.slots - held.get(v.node_id, 0))) for v in self.nodes()]

    def busy(self, node_id: str) -> int:
        return len(self.schedule.running_on(node_id))

    def queued(self) -> int:
        """Tasks waiting for a slot (reservations not granted yet)."""
        return sum(not fut.done() for waiting in self._waiting.values() for _, fut in waiting)

    def heartbeat_ages(self) -> dict[str, float]:
        """Seconds since each node's last heartbeat reached this coordinator, by node id: every
        node heard in this term, those declared dead included (their age keeps growing)."""
        now = self._clock()
        return {s.node_id: now - s.view.last_heartbeat for s in self._sessions.values() if s.view is not None}

    # ---- stream side --------------------------------------------------------------------------

    async def serve(self, first: WorkUp, inbound: AsyncIterator[WorkUp]) -> AsyncIterator[WorkDown]:
        """One node's work stream: ``first`` (a heartbeat) was read by the servicer."""
        if self._closed:
            raise FailedPrecondition("this node no longer coordinates")
        node_id = first.node_id
        session = self._sessions.setdefault(node_id, _Session(node_id))
        if session.outbox is not None:
            session.outbox.put_nowait(None)   # a newer stream of the same node replaces the old
        outbox: asyncio.Queue[WorkDown | None] = asyncio.Queue()
        session.outbox = outbox
        self._receive(session, first)
        resent = False
        for lease_id, sent in self._sent.items():
            lease = self.schedule.leases.get(lease_id)
            if lease is not None and lease.node_id == node_id:
                outbox.put_nowait(sent)
                resent = True
        if resent:
            self._catch_up(node_id)
        reader = asyncio.create_task(self._read(session, inbound, outbox), name=f"work-in-{node_id}")
        try:
            while (msg := await outbox.get()) is not None:
                yield msg
        finally:
            reader.cancel()
            if session.outbox is outbox:
                session.outbox = None
                if session.heartbeat.slots == 0:
                    self._left(session.node_id)
                self._on_change()

    async def _read(self, session: _Session, inbound: AsyncIterator[WorkUp],
                    outbox: asyncio.Queue[WorkDown | None]) -> None:
        try:
            async for msg in inbound:
                if session.outbox is not outbox or msg.node_id != session.node_id:
                    break
                self._receive(session, msg)
        except Exception as exc:  # noqa: BLE001 - a broken stream ends like a closed one
            log.debug("work stream of %s: %s", session.node_id, exc)
        finally:
            outbox.put_nowait(None)

    def _receive(self, session: _Session, msg: WorkUp) -> None:
        if msg.heartbeat is not None:
            self._heartbeat(session, msg.heartbeat)
        elif msg.result is not None:
            self._result(session.node_id, msg.result)

    def _heartbeat(self, session: _Session, hb: Heartbeat) -> None:
        node_id = session.node_id
        if node_id in self.schedule.dead:
            log.info("node %s is back; it gets new work (its old trials were re-run elsewhere)", node_id)
            revive(self.schedule, node_id)
        session.heartbeat = hb
        now = self._clock()
        session.view = NodeView(node_id, hb.slots, hb.task_memory_bytes, now)
        # Each heartbeat restates what the node runs: a claim it no longer names has ended.
        for lease_id, (_, claim) in list(self._claims.items()):
            if claim.node_id == node_id and lease_id not in hb.running:
                del self._claims[lease_id]
        trials = {t.lease_id: t for t in hb.trials}
        for lease_id in hb.running:
            lease = self.schedule.leases.get(lease_id)
            if lease is not None and lease.node_id == node_id:
                continue
            trial = trials.get(lease_id)
            if lease is None and trial is not None and trial.study_name in self._adopting:
                # A trial of an earlier coordinator's, for a search that has not decided yet.
                self._claims[lease_id] = (trial.study_name, Claim(node_id, lease_id, trial.trial_number, now))
                continue
            session.push(CancelTask(
                lease_id=lease_id, reason="the coordinator does not hold this lease (revoked, or granted "
                                          "by an earlier coordinator)"))
        self._pump()

    def _left(self, node_id: str) -> None:
        """A node that said it takes no more work (no slots) closed its stream: it is leaving.
        A task it was sent in that moment, which it refused after its stream was closed, is
        lost now rather than after --grace."""
        for lease in self.schedule.running_on(node_id):
            self.schedule.leases.pop(lease.lease_id, None)
            self.schedule.revoked.add(lease.lease_id)
            self._resolve(lease.lease_id, Outcome(False, lost=True, handed_back=True, node_id=node_id,
                                                  message=handed_back_message(node_id)))
        self._pump()

    def _result(self, node_id: str, r: TaskResult) -> None:
        handed_back = not r.ok and r.error_kind == HANDED_BACK
        lease = self.schedule.leases.get(r.lease_id)
        if not accept_result(self.schedule, r.lease_id, node_id):
            log.info("refused a result of lease %s from %s: revoked, or not that node's", r.lease_id, node_id)
            return
        self._sent.pop(r.lease_id, None)
        if r.ok:
            try:
                result = json.loads(r.result_json or b"{}")
            except ValueError as exc:
                outcome = Outcome(False, error_kind="internal", message=f"undecodable result: {exc}", node_id=node_id)
            else:
                outcome = Outcome(True, result=result, node_id=node_id)
        elif handed_back:
            # Not the configuration's fault: work.retries does not count it against it.
            outcome = Outcome(False, lost=True, handed_back=True, message=r.error_message, node_id=node_id)
        else:
            outcome = Outcome(False, error_kind=r.error_kind, message=r.error_message, node_id=node_id)
        assert lease is not None
        self._resolve(r.lease_id, outcome)
        self._pump()

    def _resolve(self, lease_id: str, outcome: Outcome) -> None:
        self._sent.pop(lease_id, None)
        fut = self._results.pop(lease_id, None)
        if fut is not None and not fut.done():
            fut.set_result(outcome)

    # ---- decisions ----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Grants free slots to waiting reservations (scheduler.place decides)."""
        if self._closed:
            return
        pending = {job: [req for req, fut in waiting if not fut.done()] for job, waiting in self._waiting.items()}
        if not any(pending.values()):
            return
        order = sorted(pending, key=lambda j: (self._rank.get(j, 0.0), j))
        placements, refusals = place(self.schedule, pending, order, self._free_views())
        futures = {req: fut for waiting in self._waiting.values() for req, fut in waiting}
        now = self._clock()
        for p in placements:
            lease = grant(self.schedule, p, uuid.uuid4().hex[:16], self.term, now)
            futures[p.request].set_result(lease)
        for r in refusals:
            futures[r.request].set_exception(FailedPrecondition(f"no node can run this job's tasks: {r.reason}"))
        for job in list(self._waiting):
            self._waiting[job] = [(req, fut) for req, fut in self._waiting[job] if not fut.done()]
            if not self._waiting[job]:
                del self._waiting[job]
        if placements:
            self._on_change()

    def _drop_waiting(self, job_id: str, fut: asyncio.Future[Lease]) -> None:
        waiting = [(r, f) for r, f in self._waiting.get(job_id, []) if f is not fut]
        if waiting:
            self._waiting[job_id] = waiting
        else:
            self._waiting.pop(job_id, None)

    async def _watch_heartbeats(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.check_interval)   # a polling period, not a synchronisation
            self.check(self._clock())

    def check(self, now: float) -> None:
        """Declares nodes silent past grace dead and resolves their tasks as lost."""
        views = [x.view for x in self._sessions.values() if x.view is not None]
        moves = declare_dead(self.schedule, views, now, self.settings.grace)
        for move in moves:
            log.warning("lease %s on %s lost: %s", move.lease.lease_id, move.lease.node_id, move.reason)
            self._resolve(move.lease.lease_id, Outcome(False, lost=True, message=move.reason,
                                                       node_id=move.lease.node_id))
        for node_id in self.schedule.dead:
            session = self._sessions.get(node_id)
            if session is not None and session.outbox is not None:
                # Silent with its stream open (hung, or cut off without a reset): end the stream,
                # so that if it recovers it reconnects and reconciles.
                session.push(None)
                session.outbox = None
        if moves:
            self._pump()
            self._on_change()
