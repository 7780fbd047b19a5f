"""What clients read, on any node: jobs, their trials, models, and a model's predictions.

Reads come from this node's replicated records (every node holds the same), except a job this
node drives, whose live copy is newer than its last write. Trials come from the job's study,
loaded, never created: a read appends nothing to the replicated journal. Predictions run on
this node's serve runner, streamed batch by batch.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
from pathlib import Path
from typing import Any, AsyncIterator

from nexus_node.errors import FailedPrecondition, InvalidInput, NotFound
from nexus_node.jobs.context import JobContext
from nexus_node.jobs.records import JobRecord, ModelRecord
from nexus_node.pipeline.csvcheck import CsvSummary
from nexus_node.pipeline.tableformat import TableFormat
from nexus_node.runner.pool import RunnerDied, RunnerPool
from nexus_node.study import studies
from nexus_node.study.trials import TrialView

#: How long a follower's read of a job it does not know waits for the job to arrive: a job
#: committed through another node reaches this one with the leader's next heartbeat or two,
#: and a client that submits through one node and watches through another must not be told
#: the job does not exist in between. (An id that never arrives is refused after the wait.)
UNKNOWN_JOB_WAIT_S = 2.0


class Queries:
    def __init__(self, ctx: JobContext, serve_pool: RunnerPool) -> None:
        self.ctx, self.serve_pool = ctx, serve_pool

    async def _arrived(self, job_id: str) -> JobRecord | None:
        """The job once this node has applied it, if that happens within
        :data:`UNKNOWN_JOB_WAIT_S`; at once when this node leads (it applied every commit)."""
        db = self.ctx.db
        if db.driver.is_leader:
            return None
        try:
            await db.driver.wait_for(lambda: job_id in db.jobs, UNKNOWN_JOB_WAIT_S)
        except TimeoutError:
            return None
        return await db.get_job(job_id)

    async def get(self, job_id: str) -> JobRecord:
        if not job_id.strip():
            raise InvalidInput("the job id is empty: pass one (`nexus jobs` lists them)")
        live = self.ctx.live(job_id)
        if live is not None:
            return dataclasses.replace(live)
        job = await self.ctx.db.get_job(job_id) or await self._arrived(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}: `nexus jobs` lists the jobs this cluster has")
        return job

    async def list(self) -> list[JobRecord]:
        jobs = await self.ctx.db.list_jobs()
        return [dataclasses.replace(self.ctx.live(j.job_id) or j) for j in jobs]

    async def trials(self, job_id: str) -> builtins.list[TrialView]:
        job = await self.get(job_id)
        study = await self.ctx.study_or_none(job)
        if study is None:
            return []
        frozen = await asyncio.to_thread(study.get_trials, False)
        return [studies.trial_view(t) for t in frozen]

    async def model(self, model_or_job: str) -> ModelRecord:
        if not model_or_job.strip():
            raise InvalidInput("the model id is empty: pass a model id or a job id (`nexus models` lists them)")
        db = self.ctx.db
        m = await db.get_model(model_or_job) or await db.model_for_job(model_or_job)
        if m is None:
            if await db.get_job(model_or_job) is not None:
                job = await self.get(model_or_job)
                raise FailedPrecondition(f"job {model_or_job} has no model yet (state {job.state})")
            raise NotFound(f"no model or job {model_or_job!r}: `nexus models` lists the models")
        return m

    async def models(self) -> builtins.list[ModelRecord]:
        return await self.ctx.db.list_models()

    async def predict(
        self, model_or_job: str, csv_path: Path, max_bytes: int | None = None, limit_flag: str = ""
    ) -> AsyncIterator[tuple[builtins.list[str], builtins.list[dict[str, Any]], dict[str, Any] | None]]:
        """Predictions for a table file (any format training takes), as ``(classes, rows,
        warnings)`` batches in row order; ``warnings`` (the rows counted by
        :func:`nexus_node.pipeline.input_checks.warning_counts`) comes with the last batch,
        None with the others.

        The serve runner sends batches as they are ready, so the node holds one batch at a
        time, not the whole result. Raises the runner's error (e.g. InvalidInput for a
        missing column) before the first batch. The training upload's recorded format goes
        along as a hint (its decimal mark, where the input's own cells leave it open), and
        ``max_bytes`` bounds what a compressed input may expand to.
        """
        model = await self.model(model_or_job)
        artifact = await self.ctx.fetch_blob(model.artifact_sha256)
        job = await self.ctx.db.get_job(model.job_id)
        async with self.serve_pool.acquire() as runner:
            runner.current = f"predict {model.model_id}"
            batches: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
            _, fut = await runner.call(
                {"task": "predict", "artifact_path": str(artifact), "csv_path": str(csv_path),
                 "format_hint": dict(job.input_format) if job is not None else {},
                 "max_bytes": max_bytes, "limit_flag": limit_flag},
                on_event=lambda ev: batches.put_nowait(ev["rows"]) if ev.get("kind") == "predictions" else None,
            )
            held: list[dict[str, Any]] | None = None
            while not (fut.done() and batches.empty()):
                getter = asyncio.ensure_future(batches.get())
                waiting: set[asyncio.Future[Any]] = {getter, fut}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                # Hold one batch back until the result says the task succeeded: a failure
                # (bad input) must reach the caller as an error, not after partial output.
                if held is not None:
                    yield list(model.classes), held, None
                held = getter.result()
            result = fut.result()
            if held is not None:
                yield list(result.get("classes", model.classes)), held, result.get("warnings")

    async def check_upload(self, path: Path, target: str, drop_columns: builtins.list[str],
                           max_bytes: int | None, limit_flag: str) -> CsvSummary:
        """The submit checks of an upload the node cannot read itself (Parquet), on this
        node's serve runner (:func:`nexus_node.pipeline.csvio.check_table`).

        Raises:
            InvalidInput, TooLarge: the runner's answer; nothing is stored.
        """
        async with self.serve_pool.acquire() as runner:
            runner.current = "check an upload"
            try:
                result = await runner.run({"task": "check", "path": str(path), "target": target,
                                           "drop_columns": drop_columns, "max_bytes": max_bytes,
                                           "limit_flag": limit_flag})
            except RunnerDied as e:
                raise InvalidInput(f"reading the uploaded file stopped its reader ({e}): it may expand past "
                                   "this node's memory; send a smaller table") from None
        return CsvSummary(encoding=str(result.get("encoding", "")), columns=[str(c) for c in result["columns"]],
                          rows=int(result["rows"]), target_present=int(result["target_present"]),
                          task=str(result["task"]), format=TableFormat.from_dict(result["format"]))
