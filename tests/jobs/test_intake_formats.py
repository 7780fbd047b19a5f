"""Submit records how an upload is read, checks a Parquet upload in a runner, bounds a gzip
upload, and does all its file work off the event loop (tests/jobs/conftest.py)."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from nexus_node.blobs.store import BlobStore
from nexus_node.errors import InvalidInput, TooLarge
from nexus_node.jobs import intake
from nexus_node.jobs.records import JobRecord, JobSpecRecord
from nexus_node.pipeline import csvio
from tests.blocking import allow_blocking

TABLE = "x;y\n" + "".join(f"{i};{i * 1.5:.1f}\n".replace(".", ",") for i in range(30))


class Records:
    def __init__(self) -> None:
        self.jobs: list[JobRecord] = []

    async def put_blob(self, sha256: str, size: int, kind: str, job_id: str = "") -> None:
        pass

    async def put_job(self, job: JobRecord) -> None:
        self.jobs.append(job)


def context(tmp_path: Path) -> SimpleNamespace:
    async def replicated(sha: str) -> None:
        pass

    with allow_blocking():
        blobs = BlobStore(tmp_path / "blobs")
    return SimpleNamespace(settings=SimpleNamespace(max_trials_limit=100), blobs=blobs, db=Records(),
                           replicated=replicated, clock=lambda: 1.0, node_id="n1")


def upload(ctx: SimpleNamespace, data: bytes) -> Path:
    with allow_blocking():
        path = ctx.blobs.new_temp(".csv")
        path.write_bytes(data)
    return path


async def test_a_gzip_decimal_comma_upload_is_recorded_as_read(tmp_path):
    ctx = context(tmp_path)
    job = await intake.submit(ctx, JobSpecRecord(target="y"), upload(ctx, gzip.compress(TABLE.encode())),
                              max_bytes=1 << 20, limit_flag="--max-upload-mb")
    assert job.input_format == {"container": "csv", "compression": "gzip", "encoding": "utf-8",
                                "delimiter": ";", "decimal": ","}
    assert job.message == "30 rows with a target, read as gzip-compressed utf-8 CSV, semicolon-separated, decimal comma"
    assert ctx.db.jobs == [job] and JobRecord.from_dict(job.to_dict()) == job   # replicates as it is


async def test_a_parquet_upload_is_checked_in_a_runner(tmp_path):
    ctx = context(tmp_path)
    seen = []

    async def in_runner(path, target, drops, max_bytes, limit_flag):
        seen.append((target, drops, max_bytes, limit_flag))
        return await asyncio.to_thread(csvio.check_table, path, target, drops, max_bytes, limit_flag)

    data = pd.DataFrame({"x": range(30), "y": ["a", "b", "c"] * 10}).to_parquet(index=False)
    job = await intake.submit(ctx, JobSpecRecord(target="y"), upload(ctx, data), max_bytes=1 << 20,
                              limit_flag="--max-upload-mb", check_in_runner=in_runner)
    assert seen == [("y", [], 1 << 20, "--max-upload-mb")]
    assert job.input_format == {"container": "parquet"} and job.encoding == ""
    assert job.message == "30 rows with a target, read as Parquet"
    path = upload(ctx, data)
    with pytest.raises(InvalidInput, match="does not read Parquet"):
        await intake.submit(ctx, JobSpecRecord(target="y"), path)
    assert not await asyncio.to_thread(path.exists)


async def test_a_gzip_bomb_is_refused_and_its_upload_removed(tmp_path):
    ctx = context(tmp_path)
    path = upload(ctx, gzip.compress(b"x,y\n" + b"1,2\n" * (1 << 20)))
    with pytest.raises(TooLarge, match="decompresses to more than this node's limit of 1 MiB"):
        await intake.submit(ctx, JobSpecRecord(target="y"), path, max_bytes=1 << 20)
    assert not await asyncio.to_thread(path.exists) and ctx.db.jobs == []
