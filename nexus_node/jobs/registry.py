"""Jobs, models, blob placement and member addresses as part of the replicated state machine.

Every node applies the same committed ``records`` commands in the same order, so every node
holds the same jobs, models and blob index, and can answer ``GetJob``, ``ListModels``... from
memory, without asking the coordinator. Writes go through consensus: :meth:`put_job` and the
other writers return once *this* node has applied the write (read-your-writes), which is the
promise a node made when it kept records in its own SQLite ("committed before the call returns").

Events travel with the write that caused them: the coordinator's job driver attaches "the state
changed" or "trial N finished" to the job record it writes, and every node publishes that event
to its own ``WatchJob`` subscribers when it applies the record. So a watcher on any node sees
the same events in the same order, and nothing is published for a write that never commits.

Rules applied here, identically everywhere:

* ``cancel_requested`` is sticky: once a cancel is applied, a later write of the same job (the
  coordinator's driver did not know yet) cannot clear it.
* A terminal job is never made active again by a late write.
* Only an ended job is deleted (``delete_job``). Nothing writes a job after it ends (its
  coordinator's last write ends it; a deposed one's writes are fenced off), so none comes back.
* A blob's placement goes once its last holder drops it, so placements do not outlive files.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any, Callable, Iterable, Iterator, cast

from nexus_node.blobs.replication import BlobInfo
from nexus_node.consensus.driver import RaftDriver
from nexus_node.consensus.state import encode_command
from nexus_node.jobs.events import STATE_CHANGED, EventHub, JobEvent, TrialView
from nexus_node.jobs.records import JOB_STUDY_PREFIX, PENDING, JobRecord, ModelRecord, check_fields

#: The state machine's command kind for records.
KIND = "records"

#: Called after a job record is applied, on the driver's task: ``(job, event_kind)``.
JobListener = Callable[[JobRecord], None]


def _string(body: dict[str, Any], key: str, limit: int = 256) -> str:
    value = body.get(key)
    if type(value) is not str or not value or len(value) > limit:
        raise ValueError(f"{body.get('op')}.{key} must be a non-empty string of at most {limit} "
                         f"characters, not {value!r:.40}")
    return value


def _sha256(body: dict[str, Any]) -> None:
    sha = _string(body, "sha256")
    if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
        raise ValueError(f"{body['op']}.sha256 must be 64 lowercase hex digits")


def validate_body(body: Any) -> None:
    """Checks a ``records`` command before it is proposed or stored (see
    ``ReplicatedState.validate``): a known op with every field of its declared type.

    Raises:
        ValueError: what is wrong.
    """
    if type(body) is not dict:
        raise ValueError("a records command is an object")
    op = body.get("op")
    if op == "put_job":
        # Any value: from_dict checks that it is an object (check_fields) before using it.
        job = JobRecord.from_dict(cast("dict[str, Any]", body.get("job")))
        if not job.job_id:
            raise ValueError("put_job: the job has no id")
        event = body.get("event")
        if event is not None:
            if type(event) is not dict or type(event.get("kinds", [])) is not list or \
                    not all(type(k) is str for k in event.get("kinds", [])):
                raise ValueError("put_job.event must be an object with a list of kinds")
            if "trial" in event:
                check_fields(TrialView, event["trial"])
    elif op in ("cancel_job", "delete_job"):
        _string(body, "job_id")
    elif op == "delete_model":
        _string(body, "model_id")
    elif op == "put_model":
        model = ModelRecord.from_dict(cast("dict[str, Any]", body.get("model")))   # checked there too
        if not model.model_id:
            raise ValueError("put_model: the model has no id")
    elif op == "put_blob":
        _sha256(body)
        _string(body, "kind")
        _string(body, "holder")
        size = body.get("size")
        if type(size) is not int or size < 0:
            raise ValueError("put_blob.size must be a non-negative int")
        if "job_id" in body:
            _string(body, "job_id")
    elif op == "drop_blob":
        _sha256(body)
        _string(body, "holder")
    elif op == "member":
        _string(body, "node_id")
        _string(body, "address")
    else:
        raise ValueError(f"unknown records op {op!r:.40}")


def _parse_items(items: Iterable[Any]) -> tuple[dict[str, JobRecord], dict[str, ModelRecord],
                                                dict[str, BlobInfo], dict[str, str]]:
    """A snapshot's records (see :meth:`ReplicatedRecords._capture`), each checked as the
    write that made it would be (:func:`validate_body`).

    Raises:
        ValueError: an item is malformed or names a record twice.
    """
    jobs: dict[str, JobRecord] = {}
    models: dict[str, ModelRecord] = {}
    blobs: dict[str, BlobInfo] = {}
    addresses: dict[str, str] = {}
    for item in items:
        if type(item) is not dict or len(item) != 1 or next(iter(item)) not in ("job", "model", "blob", "member"):
            raise ValueError(f"a records item is one of {{job|model|blob|member: ...}}, not {item!r:.60}")
        (what, raw), = item.items()
        if what == "job":
            validate_body({"op": "put_job", "job": raw})
            job = JobRecord.from_dict(raw)
            _add_once(jobs, job.job_id, job, "job")
        elif what == "model":
            validate_body({"op": "put_model", "model": raw})
            model = ModelRecord.from_dict(raw)
            _add_once(models, model.model_id, model, "model")
        elif what == "member":
            if type(raw) is not dict or set(raw) != {"node_id", "address"}:
                raise ValueError("a member item is an object of node_id and address")
            validate_body({"op": "member", **raw})
            _add_once(addresses, raw["node_id"], raw["address"], "member")
        else:
            if type(raw) is not dict or set(raw) != {"sha256", "size", "kind", "holders", "job_id"}:
                raise ValueError("a blob item is an object of sha256, size, kind, holders and job_id")
            holders = raw["holders"]
            if type(holders) is not list or not holders:
                raise ValueError(f"blob {str(raw['sha256'])[:12]}: holders is a non-empty list (a placement "
                                 "goes with its last holder)")
            for holder in holders:
                body = {"op": "put_blob", "holder": holder, **{k: raw[k] for k in ("sha256", "size", "kind")}}
                validate_body(body | ({"job_id": raw["job_id"]} if raw["job_id"] != "" else {}))
            _add_once(blobs, raw["sha256"], BlobInfo(raw["sha256"], raw["size"], raw["kind"], set(holders),
                                                     raw["job_id"]), "blob")
    return jobs, models, blobs, addresses


def _add_once(into: dict[str, Any], key: str, value: Any, what: str) -> None:
    if key in into:
        raise ValueError(f"{what} {key!r:.70} is there twice")
    into[key] = value


class ReplicatedRecords:
    """The applied records of one node, and the writers that commit new ones.

    Register before :meth:`RaftDriver.start` so the replayed log reaches it.

    Args:
        driver: The node's driver.
        hub: Where applied job events are published (this node's WatchJob subscribers).
    """

    def __init__(self, driver: RaftDriver, hub: EventHub) -> None:
        self.driver = driver
        self.hub = hub
        self.jobs: dict[str, JobRecord] = {}
        self.models: dict[str, ModelRecord] = {}
        self.blobs: dict[str, BlobInfo] = {}
        self.addresses: dict[str, str] = {}
        self.job_listeners: list[JobListener] = []
        self.blob_listeners: list[Callable[[BlobInfo], None]] = []
        #: Called after a job or model is deleted, on the driver's task (the blob collector
        #: looks for garbage then).
        self.delete_listeners: list[Callable[[], None]] = []
        driver.state.register(KIND, self._apply, validate=validate_body, forwarded=self._check_forwarded,
                              capture=self._capture, restore=self._restore)

    def _check_forwarded(self, body: dict[str, Any], origin: str) -> None:
        """What a follower may write (the leader checks a write ``origin`` handed over; the
        body is valid already). The coordinator's own writes (job progress, results, models)
        are term-fenced and never forwarded (``RaftDriver.propose``), so a follower that hands
        one over is not running our code: it may submit a new job (PENDING, nothing run yet),
        cancel one, delete an ended job or a model (user actions, as a cancel is), and record
        its own blobs and address, nothing else.

        Raises:
            ValueError: ``origin`` may not make this write.
        """
        op = body["op"]
        if op == "put_job":
            job = JobRecord.from_dict(body["job"])
            if job.job_id in self.jobs:
                raise ValueError(f"job {job.job_id} exists: only the coordinator changes it")
            if job.state != PENDING or job.cancel_requested or job.trials or job.model_id or \
                    job.best_value is not None or job.started_at or job.finished_at:
                raise ValueError("a new job is PENDING with nothing run")
            if job.node_id != origin:
                raise ValueError(f"job {job.job_id} names node {job.node_id!r} as its submitter")
        elif op == "put_model":
            raise ValueError("only the coordinator records models")
        elif op in ("put_blob", "drop_blob"):
            if body["holder"] != origin:
                raise ValueError(f"a node records only its own copies, not {body['holder']!r}'s")
        elif op == "member":
            if body["node_id"] != origin:
                raise ValueError(f"a node records only its own address, not {body['node_id']!r}'s")

    # ---- apply (driver task) ------------------------------------------------------------------

    def _apply(self, body: Any, index: int) -> Any:
        if not isinstance(body, dict):
            return None
        op = body.get("op")
        try:
            if op == "put_job":
                return self._apply_job(JobRecord.from_dict(body["job"]), body.get("event"))
            if op == "cancel_job":
                job = self.jobs.get(str(body["job_id"]))
                if job is not None and not job.terminal:
                    job.cancel_requested = True
                    self._job_applied(job, None)
                return None
            if op == "delete_job":
                job = self.jobs.get(str(body["job_id"]))
                if job is not None and job.terminal:
                    del self.jobs[job.job_id]
                    self._deleted()
                return None
            if op == "delete_model":
                if self.models.pop(str(body["model_id"]), None) is not None:
                    self._deleted()
                return None
            if op == "put_model":
                model = ModelRecord.from_dict(body["model"])
                self.models[model.model_id] = model
                return None
            if op == "put_blob":
                sha = str(body["sha256"])
                info = self.blobs.get(sha)
                if info is None:
                    info = self.blobs[sha] = BlobInfo(sha, int(body["size"]), str(body["kind"]),
                                                      job_id=str(body.get("job_id", "")))
                info.holders.add(str(body["holder"]))
                for listener in self.blob_listeners:
                    listener(info)
                return None
            if op == "drop_blob":
                info = self.blobs.get(str(body["sha256"]))
                if info is not None:
                    info.holders.discard(str(body["holder"]))
                    if not info.holders:
                        del self.blobs[info.sha256]
                return None
            if op == "member":
                node_id, address = str(body["node_id"]), str(body["address"])
                self.addresses[node_id] = address
                # Only the driver's address book decides, and it may first check a move
                # (the record's writer names itself; the record is not proof).
                self.driver.note_recorded(node_id, address)
                return None
        except (KeyError, TypeError, ValueError):
            return None   # malformed: skipped the same way on every node
        return None

    def _apply_job(self, job: JobRecord, event: Any) -> None:
        old = self.jobs.get(job.job_id)
        if old is not None:
            if old.terminal and not job.terminal:
                return   # a late write of an ended job
            job.cancel_requested = job.cancel_requested or old.cancel_requested
        self.jobs[job.job_id] = job
        self._job_applied(job, event if isinstance(event, dict) else None,
                          state_changed=old is None or old.state != job.state)

    def _deleted(self) -> None:
        for listener in self.delete_listeners:
            listener()

    def _job_applied(self, job: JobRecord, event: dict[str, Any] | None, state_changed: bool = False) -> None:
        snapshot = dataclasses.replace(job)
        if state_changed:
            self.hub.publish(JobEvent(STATE_CHANGED, snapshot))
        if event is not None and isinstance(event.get("trial"), dict):
            try:
                view = TrialView(**event["trial"])
            except TypeError:
                view = None
            if view is not None:
                for kind in event.get("kinds", []):
                    self.hub.publish(JobEvent(str(kind), snapshot, view))
        for listener in self.job_listeners:
            listener(snapshot)

    # ---- snapshots (driver task) ---------------------------------------------------------------

    def _capture(self) -> Callable[[], Iterator[dict[str, Any]]]:
        """Items ``{"job": ...}``, ``{"model": ...}``, ``{"blob": ...}``, ``{"member": ...}``.
        A job's cancel and a blob's holders change in place: those are copied now."""
        jobs = [dataclasses.replace(j) for j in self.jobs.values()]
        models = list(self.models.values())   # replaced, never changed, by later writes
        blobs = [{"sha256": b.sha256, "size": b.size, "kind": b.kind, "holders": sorted(b.holders),
                  "job_id": b.job_id} for b in self.blobs.values()]
        members = [{"node_id": n, "address": a} for n, a in self.addresses.items()]

        def items() -> Iterator[dict[str, Any]]:
            yield from ({"job": j.to_dict()} for j in jobs)
            yield from ({"model": m.to_dict()} for m in models)
            yield from ({"blob": b} for b in blobs)
            yield from ({"member": m} for m in members)
        return items

    def _restore(self, items: Iterable[Any], index: int = 0) -> None:
        """Replaces every record by a snapshot's, then tells this node's listeners as the
        writes would have: each job (a state change is published to its watchers), each blob
        placement, and one deletion (what is gone), and the driver each member's address.

        A job restored on the coordinator is handled as an applied write of it is (started if
        it is new and active, cancelled if its cancel is new); on any other node the job
        manager does nothing with it.

        Raises:
            ValueError: an item is malformed or names a record twice; nothing changed.
        """
        jobs, models, blobs, addresses = _parse_items(items)
        old_jobs = self.jobs
        self.jobs, self.models, self.blobs, self.addresses = jobs, models, blobs, addresses
        for node_id, address in addresses.items():
            self.driver.note_recorded(node_id, address)
        for job in jobs.values():
            old = old_jobs.get(job.job_id)
            self._job_applied(job, None, state_changed=old is None or old.state != job.state)
        for info in blobs.values():
            for listener in self.blob_listeners:
                listener(info)
        self._deleted()

    # ---- writers (event loop) -----------------------------------------------------------------

    async def _commit(self, body: dict[str, Any], term: int | None = None) -> None:
        await self.driver.propose(encode_command(KIND, body, term), uuid.uuid4().hex)

    # ``term``: the coordinator's writes are fenced to the term it leads in (see
    # RaftDriver.propose); a write from any node (a submit, a cancel) passes None.

    async def put_job(self, job: JobRecord, *, trial: TrialView | None = None,
                      kinds: tuple[str, ...] = (), term: int | None = None) -> None:
        """Commits ``job``; with ``trial``, every node publishes ``kinds`` events about it."""
        body: dict[str, Any] = {"op": "put_job", "job": job.to_dict()}
        if trial is not None:
            body["event"] = {"trial": dataclasses.asdict(trial), "kinds": list(kinds)}
        await self._commit(body, term)

    async def cancel_job(self, job_id: str) -> None:
        await self._commit({"op": "cancel_job", "job_id": job_id})

    async def delete_job(self, job_id: str, term: int | None = None) -> None:
        """Deletes an ended job's record (a job still running is left as it is)."""
        await self._commit({"op": "delete_job", "job_id": job_id}, term)

    async def delete_model(self, model_id: str, term: int | None = None) -> None:
        await self._commit({"op": "delete_model", "model_id": model_id}, term)

    async def put_model(self, model: ModelRecord, term: int | None = None) -> None:
        await self._commit({"op": "put_model", "model": model.to_dict()}, term)

    async def put_blob(self, sha256: str, size: int, kind: str, term: int | None = None, job_id: str = "") -> None:
        """Records that this node holds blob ``sha256``; ``job_id``: the job it was made for
        (its upload, a task's output), which keeps it while that job runs (jobs/references.py)."""
        body: dict[str, Any] = {"op": "put_blob", "sha256": sha256, "size": size, "kind": kind,
                                "holder": self.driver.node_id}
        if job_id:
            body["job_id"] = job_id
        await self._commit(body, term)

    async def drop_blob(self, sha256: str) -> None:
        """Records that this node no longer holds blob ``sha256`` (commit before deleting the
        file, so no node is sent to a copy that is gone)."""
        await self._commit({"op": "drop_blob", "sha256": sha256, "holder": self.driver.node_id})

    async def put_member(self, node_id: str, address: str) -> None:
        await self._commit({"op": "member", "node_id": node_id, "address": address})

    # ---- reads (local) ---------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobRecord | None:
        job = self.jobs.get(job_id)
        return dataclasses.replace(job) if job is not None else None

    async def list_jobs(self) -> list[JobRecord]:
        return [dataclasses.replace(j) for j in sorted(self.jobs.values(), key=lambda j: j.created_at)]

    def job_of_study(self, study_name: str) -> JobRecord | None:
        """The applied job whose Optuna study ``study_name`` is, if any (one dict lookup: the
        storage service asks from its threads)."""
        if not study_name.startswith(JOB_STUDY_PREFIX):
            return None
        job = self.jobs.get(study_name[len(JOB_STUDY_PREFIX):])
        return job if job is not None and job.study_name == study_name else None

    async def get_model(self, model_id: str) -> ModelRecord | None:
        return self.models.get(model_id)

    async def model_for_job(self, job_id: str) -> ModelRecord | None:
        found = [m for m in self.models.values() if m.job_id == job_id]
        return max(found, key=lambda m: m.created_at) if found else None

    async def list_models(self) -> list[ModelRecord]:
        return sorted(self.models.values(), key=lambda m: m.created_at)

    def holders(self, sha256: str) -> set[str]:
        info = self.blobs.get(sha256)
        return set(info.holders) if info else set()

    async def wait_job(self, job_id: str, predicate: Callable[[JobRecord], bool], timeout: float) -> JobRecord | None:
        """Waits until the applied record of ``job_id`` satisfies ``predicate``."""
        def check() -> bool:
            job = self.jobs.get(job_id)
            return job is not None and predicate(job)
        try:
            await self.driver.wait_for(check, timeout)
        except (TimeoutError, asyncio.TimeoutError):
            pass
        return await self.get_job(job_id)
