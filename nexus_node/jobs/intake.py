"""What a job must be to be accepted, and accepting it (``SubmitJob``).

Everything a job's stages will use is checked here, before anything is stored, so that an
accepted job does not fail on its input later: the spec alone (:func:`validate_spec`), then
the upload (:func:`~nexus_node.pipeline.csvcheck.check_csv`; a Parquet file in a runner) and
the metric against the task
its target defines (:func:`validate_metric`). A problem is an
:class:`~nexus_node.errors.InvalidInput` whose message says what to fix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import secrets
from pathlib import Path
from typing import Awaitable, Callable

from nexus_node.errors import InvalidInput, NexusError
from nexus_node.jobs.context import JobContext
from nexus_node.jobs.records import JOB_STUDY_PREFIX, PENDING, JobRecord, JobSpecRecord
from nexus_node.pipeline.csvcheck import CsvSummary, check_csv, upload_container
from nexus_node.pipeline.tableformat import PARQUET
from nexus_node.study.constraints import parse_override

METRICS = {  # name -> maximize
    "r2": True, "rmse": False, "mae": False,
    "accuracy": True, "f1": True, "roc_auc": True, "log_loss": False,
}
REGRESSION_METRICS = ("r2", "rmse", "mae")
CLASSIFICATION_METRICS = ("accuracy", "f1", "roc_auc", "log_loss")
DEFAULT_METRIC = {"regression": "r2", "binary": "roc_auc", "multiclass": "accuracy"}
#: Seeds numpy, scikit-learn and torch all accept: 0 <= seed < 2**32. A job's trials and
#: samplers derive theirs from the job's (:func:`derived_seed`), wrapping inside the range.
SEED_LIMIT = 2**32
MAX_USE_CASE_CHARS = 2_000   # the prompts use the first 1,000 (nexus_node.llm)
MAX_FILENAME_CHARS = 1_024


def derived_seed(seed: int, offset: int) -> int:
    """The seed of the ``offset``-th trial (or resumed sampler) of a job seeded ``seed``."""
    return (seed + offset) % SEED_LIMIT


def metrics_for(task: str) -> tuple[str, ...]:
    return REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS


def validate_spec(spec: JobSpecRecord, max_trials_limit: int) -> None:
    """Checks what the spec alone decides; :func:`validate_metric` checks the metric against
    the uploaded target.

    Raises:
        InvalidInput: the message says what to fix.
    """
    if not spec.target.strip():
        raise InvalidInput("no target column given: set JobSpec.target (CLI: --target COL)")
    if not 0 <= spec.seed < SEED_LIMIT:
        raise InvalidInput(f"seed {spec.seed} is out of range: use 0 to {SEED_LIMIT - 1} "
                           "(0: a seed is chosen and recorded)")
    if len(spec.use_case) > MAX_USE_CASE_CHARS:
        raise InvalidInput(f"the use case is {len(spec.use_case):,} characters long; describe the goal in "
                           f"at most {MAX_USE_CASE_CHARS:,}")
    if len(spec.filename) > MAX_FILENAME_CHARS:
        raise InvalidInput(f"the file name is longer than {MAX_FILENAME_CHARS:,} characters: send a shorter one")
    if spec.max_trials < 0 or spec.max_trials > max_trials_limit:
        raise InvalidInput(f"max_trials must be between 0 and {max_trials_limit}")
    if not math.isfinite(spec.time_budget_seconds) or spec.time_budget_seconds < 0:
        raise InvalidInput("time_budget_seconds must be 0 (no limit) or a positive number of seconds")
    if spec.metric and spec.metric not in METRICS:
        raise InvalidInput(f"unknown metric {spec.metric!r}; choose one of {sorted(METRICS)}")
    if spec.constraints_json:
        parse_override(spec.constraints_json)


def validate_metric(spec: JobSpecRecord, task: str) -> None:
    """The metric must fit the task the target defines (decided at submit from the uploaded
    column as preparation decides it: :func:`nexus_node.pipeline.csvcheck.target_task`)."""
    fits = metrics_for(task)
    if spec.metric and spec.metric not in fits:
        raise InvalidInput(
            f"metric {spec.metric!r} does not fit target {spec.target.strip()!r}, which makes this a {task} "
            f"job; choose one of {list(fits)}, or no metric for the default ({DEFAULT_METRIC[task]})")


#: Checks an upload the node cannot read itself (Parquet) in a runner:
#: ``(path, target, drop_columns, max_bytes, limit_flag)`` to its summary.
RunnerCheck = Callable[[Path, str, list[str], "int | None", str], Awaitable[CsvSummary]]


async def submit(ctx: JobContext, spec: JobSpecRecord, upload: Path, *, max_bytes: int | None = None,
                 limit_flag: str = "", check_in_runner: RunnerCheck | None = None) -> JobRecord:
    """Validate the spec and upload, store the upload, commit the job (the coordinator, maybe
    this node, starts it when it applies the record).

    A CSV (gzip-compressed or not) is checked here, in a thread
    (:func:`~nexus_node.pipeline.csvcheck.check_csv`); a Parquet file by ``check_in_runner``
    (reading it needs pyarrow, which the node does not import). The format detected is
    recorded on the job (``input_format``), so preparation reads the file the same way.

    Args:
        max_bytes: The most bytes a compressed upload may expand to (the node's upload limit).
        limit_flag: The node option that sets it (for the message).
        check_in_runner: Checks a Parquet upload; without it Parquet is refused.

    Raises:
        InvalidInput: nothing is stored; the message says what to fix.
        TooLarge: the upload expands past ``max_bytes``; nothing is stored.
    """
    validate_spec(spec, ctx.settings.max_trials_limit)
    try:
        container = await asyncio.to_thread(upload_container, upload)
        if container == PARQUET:
            if check_in_runner is None:
                raise InvalidInput("this node does not read Parquet uploads: send the table as CSV")
            summary = await check_in_runner(upload, spec.target, list(spec.drop_columns), max_bytes, limit_flag)
        else:
            summary = await asyncio.to_thread(check_csv, upload, spec.target, spec.drop_columns, max_bytes,
                                              limit_flag)
        validate_metric(spec, summary.task)
    except NexusError:
        await asyncio.to_thread(upload.unlink, missing_ok=True)
        raise
    sha, size = await asyncio.to_thread(ctx.blobs.ingest, upload)
    job_id = "job-" + secrets.token_hex(5)
    # Recorded as the job's before the job is: the blob collector keeps it while the job
    # runs, and removes it (after its grace period) if the job is never recorded.
    await ctx.db.put_blob(sha, size, "dataset", job_id=job_id)
    await ctx.replicated(sha)
    seed = spec.seed or secrets.randbelow(2**31 - 1) + 1
    job = JobRecord(
        job_id=job_id, spec=spec, state=PENDING, created_at=ctx.clock(), seed=seed,
        node_id=ctx.node_id, dataset_sha256=sha, dataset_bytes=size,
        encoding=summary.encoding, input_format=summary.format.to_dict(), study_name=JOB_STUDY_PREFIX + job_id,
        message=f"{summary.target_present} rows with a target, read as {summary.format.describe()}",
    )
    await ctx.db.put_job(job)   # committed through consensus before the call returns
    return dataclasses.replace(job)
