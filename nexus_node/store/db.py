"""The node's SQLite database (aiosqlite): jobs, models and the blob index.

Records are stored as JSON documents beside the few columns we query by, so adding a field
to a record needs no migration. Every write commits before it returns: a job the node has
acknowledged survives a crash.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiosqlite

from nexus_node.jobs.records import JobRecord, ModelRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS models_job ON models(job_id);
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    kind TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self._db = await aiosqlite.connect(self.path)
        # WAL: readers (ListJobs) never wait behind the writer (trial updates).
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.executescript(SCHEMA)
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "database not open"
        return self._db

    async def put_job(self, job: JobRecord) -> None:
        await self.db.execute(
            "INSERT INTO jobs(job_id, state, created_at, doc) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(job_id) DO UPDATE SET state=excluded.state, doc=excluded.doc",
            (job.job_id, job.state, job.created_at, json.dumps(job.to_dict())),
        )
        await self.db.commit()

    async def get_job(self, job_id: str) -> JobRecord | None:
        async with self.db.execute("SELECT doc FROM jobs WHERE job_id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        return JobRecord.from_dict(json.loads(row[0])) if row else None

    async def list_jobs(self) -> list[JobRecord]:
        async with self.db.execute("SELECT doc FROM jobs ORDER BY created_at") as cur:
            rows = await cur.fetchall()
        return [JobRecord.from_dict(json.loads(r[0])) for r in rows]

    async def put_model(self, model: ModelRecord) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO models(model_id, job_id, created_at, doc) VALUES (?, ?, ?, ?)",
            (model.model_id, model.job_id, model.created_at, json.dumps(model.to_dict())),
        )
        await self.db.commit()

    async def get_model(self, model_id: str) -> ModelRecord | None:
        async with self.db.execute("SELECT doc FROM models WHERE model_id = ?", (model_id,)) as cur:
            row = await cur.fetchone()
        return ModelRecord.from_dict(json.loads(row[0])) if row else None

    async def model_for_job(self, job_id: str) -> ModelRecord | None:
        async with self.db.execute(
            "SELECT doc FROM models WHERE job_id = ? ORDER BY created_at DESC LIMIT 1", (job_id,)
        ) as cur:
            row = await cur.fetchone()
        return ModelRecord.from_dict(json.loads(row[0])) if row else None

    async def list_models(self) -> list[ModelRecord]:
        async with self.db.execute("SELECT doc FROM models ORDER BY created_at") as cur:
            rows = await cur.fetchall()
        return [ModelRecord.from_dict(json.loads(r[0])) for r in rows]

    async def put_blob(self, sha256: str, size: int, kind: str) -> None:
        await self.db.execute(
            "INSERT OR IGNORE INTO blobs(sha256, size, kind, created_at) VALUES (?, ?, ?, ?)",
            (sha256, size, kind, time.time()),
        )
        await self.db.commit()
