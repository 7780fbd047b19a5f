"""``nexus.v1.NexusService``: translates protobuf to domain calls and domain errors to
gRPC status codes. No business logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from nexus_node import bounded_json
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node._generated.nexus.v1 import nexus_pb2_grpc, runner_pb2_grpc
from nexus_node.api import convert
from nexus_node.blobs import files
from nexus_node.cluster.tokens import ReplicatedTokens, TokenNameTaken
from nexus_node.cluster.view import ClusterView
from nexus_node.consensus.driver import MeshStopped
from nexus_node.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidInput,
    NexusError,
    NotFound,
    TooLarge,
    Unauthenticated,
)
from nexus_node.jobs.events import SNAPSHOT, JobEvent
from nexus_node.jobs.manager import JobManager
from nexus_node.net.roles import parse_client_role
from nexus_node.study import studies

log = logging.getLogger(__name__)


class UploadIdle(NexusError):
    """An upload stream sent nothing for the node's idle timeout (``--upload-idle-s``)."""


STATUS = {
    UploadIdle: grpc.StatusCode.DEADLINE_EXCEEDED,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}
PREDICT_BATCH = 512
STARTING = ("the node is starting (joining or resuming its cluster and replaying its log): "
            "retry in a moment")


def status_for(e: NexusError) -> grpc.StatusCode:
    for cls in type(e).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


@contextlib.asynccontextmanager
async def _mapped(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    try:
        yield
    except NexusError as e:
        await context.abort(status_for(e), str(e))
    except (TimeoutError, MeshStopped) as e:
        # Before OSError: TimeoutError is one. A write that timed out may still take effect.
        await context.abort(grpc.StatusCode.UNAVAILABLE,
                            f"the cluster could not commit this in time (no coordinator or no quorum "
                            f"reachable: {e or type(e).__name__}); it may still take effect: check "
                            f"before retrying")
    except OSError as e:
        # A blob or the data dir vanished under the node: say so rather than UNKNOWN.
        log.exception("storage error")
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"the node's data dir could not be read: {e}")


def _until_ready(cls: type) -> type:
    """Wraps every NexusService method of ``cls`` so that it answers UNAVAILABLE (the node is
    starting) until the servicer's ``ready`` is set: the server serves before the mesh has
    joined or resumed the cluster, and every call needs the mesh (reads before the log is
    replayed would answer from an empty state)."""
    for method in pb.DESCRIPTOR.services_by_name["NexusService"].methods:
        fn = cls.__dict__.get(method.name)
        if fn is None:
            continue
        guarded: Callable[..., Any]
        if inspect.isasyncgenfunction(fn):
            async def guarded_stream(self: Any, request: Any, context: Any, _fn: Any = fn) -> AsyncIterator[Any]:
                if not self.ready:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, STARTING)
                async for item in _fn(self, request, context):
                    yield item
            guarded = guarded_stream
        else:
            async def guarded_call(self: Any, request: Any, context: Any, _fn: Any = fn) -> Any:
                if not self.ready:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, STARTING)
                return await _fn(self, request, context)
            guarded = guarded_call
        setattr(cls, method.name, functools.wraps(fn)(guarded))
    return cls


@_until_ready
class NexusServicer(nexus_pb2_grpc.NexusServiceServicer):
    """Every call answers UNAVAILABLE until the node sets ``ready`` (after its mesh started)."""

    def __init__(
        self, manager: JobManager, cluster: Callable[[], Awaitable[ClusterView]], temp_file: Callable[[str], Path],
        max_upload_bytes: int, max_predict_bytes: int, tokens: ReplicatedTokens | None = None,
        upload_idle_s: float = 30.0,
    ) -> None:
        self.ready = False
        self.upload_idle_s = upload_idle_s
        self.manager = manager
        self.tokens = tokens
        self.cluster = cluster
        self.temp_file = temp_file
        self.max_upload_bytes = max_upload_bytes
        self.max_predict_bytes = max_predict_bytes

    async def _receive_file(
        self, first_field: str, requests: AsyncIterator, limit: int, what: str, limit_flag: str
    ) -> tuple[object, Path]:
        """Read a stream of (header, chunk, chunk, ...) into a temp file, enforcing ``limit``
        (set by the node's ``limit_flag``), the room on the data dir's disk (a size the header
        declares is checked before any byte is taken) and the idle timeout: a stream that sends
        nothing for ``upload_idle_s`` is ended with :class:`UploadIdle`, and its temp file
        removed, so streams held open cannot pile up open files."""
        room = self.disk_room(what)
        header = None
        path = await asyncio.to_thread(self.temp_file, ".csv")
        size = 0
        messages = aiter(requests)
        try:
            async with files.Writer(path) as f:
                while True:
                    try:
                        async with asyncio.timeout(self.upload_idle_s):
                            req = await anext(messages)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise UploadIdle(
                            f"the {what} stream sent nothing for {self.upload_idle_s:g} s, so the node ended it: "
                            f"send the file without pauses (the node's --upload-idle-s sets how long it waits)"
                        ) from None
                    kind = req.WhichOneof("payload")
                    if kind == first_field:
                        if header is not None:
                            raise InvalidInput(f"{first_field} sent twice: send it once, first")
                        header = getattr(req, first_field)
                        if getattr(header, "size_bytes", 0) > 0:
                            room(header.size_bytes)   # refused before a byte is taken
                    elif kind == "chunk":
                        if header is None:
                            raise InvalidInput(f"send {first_field} first, then the CSV bytes")
                        size += len(req.chunk)
                        if size > limit:
                            raise TooLarge(
                                f"the {what} is over this node's limit of {limit >> 20} MiB: "
                                f"send a smaller file or raise the node's {limit_flag}"
                            )
                        room(size)   # a client that did not say the size
                        await f.write(req.chunk)
            if header is None:
                raise InvalidInput(f"empty request: send {first_field} first, then the CSV bytes")
        except BaseException:
            await files.remove(path)
            raise
        return header, path

    #: Raises (disk.DiskLow: RESOURCE_EXHAUSTED) when the data dir is short of space; the node
    #: sets it. Called before an upload stores a byte.
    disk_check: Callable[[str], None] = staticmethod(lambda what: None)
    #: A check of sizes against the room on the data dir's disk (node/disk.py ``room_for``).
    disk_room: Callable[[str], Callable[[int], None]] = staticmethod(lambda what: lambda size: None)

    async def SubmitJob(self, request_iterator, context):  # noqa: N802 (gRPC method names)
        async with _mapped(context):
            self.disk_check("upload")
            spec, path = await self._receive_file("spec", request_iterator, self.max_upload_bytes, "upload",
                                                  "--max-upload-mb")
            try:
                job = await self.manager.submit(convert.spec_from_pb(spec), path, self.max_upload_bytes,
                                                "--max-upload-mb")
            finally:
                await files.remove(path)   # moved into the blob store when accepted
            return pb.SubmitJobResponse(job_id=job.job_id, job=convert.job_to_pb(job))

    async def GetJob(self, request, context):  # noqa: N802
        async with _mapped(context):
            return convert.job_to_pb(await self.manager.get(request.job_id))

    async def ListJobs(self, request, context):  # noqa: N802
        async with _mapped(context):
            return pb.ListJobsResponse(jobs=[convert.job_to_pb(j) for j in await self.manager.list()])

    async def WatchJob(self, request, context):  # noqa: N802
        async with _mapped(context):
            with self.manager.events.subscribe(request.job_id) as queue:
                # Subscribe before the snapshot so no event between the two is missed.
                job = await self.manager.get(request.job_id)
                yield convert.event_to_pb(JobEvent(SNAPSHOT, job))
                while not job.terminal:
                    event = await queue.get()
                    job = event.job
                    yield convert.event_to_pb(event)

    async def CancelJob(self, request, context):  # noqa: N802
        async with _mapped(context):
            return convert.job_to_pb(await self.manager.cancel(request.job_id))

    async def DeleteJob(self, request, context):  # noqa: N802
        async with _mapped(context):
            deleted = await self.manager.delete_job(request.job_id, request.keep_models)
            return pb.DeleteJobResponse(job_id=deleted.job_id, deleted_models=deleted.deleted_models,
                                        kept_models=deleted.kept_models, study_deleted=deleted.study_deleted)

    async def DeleteModel(self, request, context):  # noqa: N802
        async with _mapped(context):
            model = await self.manager.delete_model(request.model_id)
            return pb.DeleteModelResponse(model_id=model.model_id, job_id=model.job_id)

    async def ListTrials(self, request, context):  # noqa: N802
        async with _mapped(context):
            trials = await self.manager.trials(request.job_id)
            return pb.ListTrialsResponse(trials=[convert.trial_to_pb(t) for t in trials])

    async def ListModels(self, request, context):  # noqa: N802
        async with _mapped(context):
            return pb.ListModelsResponse(models=[convert.model_to_pb(m) for m in await self.manager.models()])

    async def GetModel(self, request, context):  # noqa: N802
        async with _mapped(context):
            return convert.model_to_pb(await self.manager.model(request.model_id))

    async def Predict(self, request_iterator, context):  # noqa: N802
        async with _mapped(context):
            self.disk_check("prediction input")
            model_id, path = await self._receive_file(
                "model_id", request_iterator, self.max_predict_bytes, "prediction input", "--max-predict-mb"
            )
            try:
                if (await asyncio.to_thread(path.stat)).st_size == 0:
                    raise InvalidInput("the prediction input is empty: send a CSV with a header row")
                row = 0
                first = True
                async for classes, rows, warnings in self.manager.predict(
                        str(model_id), path, self.max_predict_bytes, "--max-predict-mb"):
                    for start in range(0, len(rows), PREDICT_BATCH):
                        batch = [convert.prediction_to_pb(row + i, p)
                                 for i, p in enumerate(rows[start:start + PREDICT_BATCH])]
                        row += len(batch)
                        last = warnings is not None and start + PREDICT_BATCH >= len(rows)
                        yield pb.PredictResponse(
                            classes=classes if first else [], predictions=batch,
                            warnings=convert.predict_warnings_to_pb(warnings) if last else None)
                        first = False
            finally:
                await files.remove(path)

    async def ExportModel(self, request, context):  # noqa: N802
        async with _mapped(context):
            model = await self.manager.model(request.model_id)
            await self.manager.fetch_blob(model.artifact_sha256)   # fetched from a peer if need be
            first = True
            async for chunk in files.read_chunks(self.manager.blobs.path(model.artifact_sha256)):
                if first:
                    yield pb.ExportModelChunk(data=chunk, sha256=model.artifact_sha256,
                                              total_bytes=model.artifact_bytes)
                    first = False
                else:
                    yield pb.ExportModelChunk(data=chunk)

    async def GetCluster(self, request, context):  # noqa: N802
        async with _mapped(context):   # MeshStopped (the node stops): UNAVAILABLE
            return convert.cluster_to_pb(await self.cluster())

    async def WatchCluster(self, request, context):  # noqa: N802
        changes = self.manager.changes
        version = changes.version   # read before the first view so no change is missed
        yield convert.cluster_to_pb(await self.cluster())
        while True:
            version = await changes.wait_past(version)
            yield convert.cluster_to_pb(await self.cluster())

    async def CreateToken(self, request, context):  # noqa: N802
        async with _mapped(context):
            try:
                role = parse_client_role(pb.TokenRole.Name(request.role).lower()) if request.role else None
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            if role is None:
                raise InvalidInput("give the token a role: read, submit or admin")
            try:
                record, secret = await self._tokens().create(request.name, role)
            except TokenNameTaken:
                raise AlreadyExists(f"a token named {request.name!r} exists: revoke it first or pick "
                                    f"another name") from None
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            return pb.CreateTokenReply(token=convert.token_to_pb(record), secret=secret)

    async def ListTokens(self, request, context):  # noqa: N802
        async with _mapped(context):
            return pb.ListTokensReply(tokens=[convert.token_to_pb(t) for t in self._tokens().list()])

    async def RevokeToken(self, request, context):  # noqa: N802
        async with _mapped(context):
            token = await self._tokens().revoke(request.name)
            if token is None:
                raise NotFound(f"no token named {request.name!r}: `nexus token list` shows them")
            return pb.RevokeTokenReply(token=convert.token_to_pb(token))

    def _tokens(self) -> ReplicatedTokens:
        if self.tokens is None:
            raise FailedPrecondition("this node has no token of its own, so it is open to local clients and a "
                                     "client token would restrict nothing: start the nodes with --token-file")
        return self.tokens


class RunnerServicer(runner_pb2_grpc.RunnerServiceServicer):
    """``nexus.v1.RunnerService``: the node's own runners write a trial's reports and its end.

    Apart from NexusService so that the interceptor can keep it to the peer secret: a client
    token, even a submit one, can never record a trial's result.
    """

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    async def ReportSteps(self, request, context):  # noqa: N802
        async with _mapped(context):
            steps = [(int(s.step), float(s.value)) for s in request.steps]
            written = await asyncio.get_running_loop().run_in_executor(
                None, studies.report_steps, self.manager.storage, int(request.trial_id), steps)
            return pb.ReportStepsReply(written=written)

    async def FinishTrial(self, request, context):  # noqa: N802
        async with _mapped(context):
            steps = [(int(s.step), float(s.value)) for s in request.steps]
            # A trial's attributes go into the replicated journal: bounded like any outside JSON.
            attrs = (bounded_json.loads(request.user_attrs_json, "user_attrs_json", max_chars=1 << 20,
                                        max_depth=32) if request.user_attrs_json else {})
            if not isinstance(attrs, dict):
                raise InvalidInput("user_attrs_json must be a JSON object")
            state, value = await asyncio.get_running_loop().run_in_executor(
                None, studies.finish_trial, self.manager.storage, int(request.trial_id), steps, attrs,
                request.state, float(request.value))
            return pb.FinishTrialReply(state=state, value=value or 0.0, has_value=value is not None)
