import hashlib

from nexus_node.jobs.records import JobRecord, JobSpecRecord, ModelRecord
from nexus_node.store.blobs import BlobStore
from nexus_node.store.db import Database


def test_blob_is_content_addressed_and_idempotent(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    for _ in range(2):
        t = store.new_temp()
        t.write_bytes(b"hello")
        sha, size = store.ingest(t)
        assert not t.exists()
    assert sha == hashlib.sha256(b"hello").hexdigest() and size == 5
    assert store.path(sha).read_bytes() == b"hello"
    assert b"".join(store.read_chunks(sha, 2)) == b"hello"


async def test_records_survive_reopen(tmp_path):
    db = Database(tmp_path / "n.db")
    await db.open()
    job = JobRecord(job_id="job-1", spec=JobSpecRecord(target="y", drop_columns=["a"]), created_at=1.0,
                    test_metrics={"r2": 0.9}, feature_importance={"a": 0.5, "b": 0.1})
    await db.put_job(job)
    job.state = "SEARCHING"
    await db.put_job(job)
    await db.put_model(ModelRecord("model-1", "job-1", "regression", "y", ["a"], [], {"r2": 0.9}, "0" * 64, 10, 2.0))
    await db.close()

    db2 = Database(tmp_path / "n.db")
    await db2.open()
    back = await db2.get_job("job-1")
    assert back == job
    assert [j.job_id for j in await db2.list_jobs()] == ["job-1"]
    assert (await db2.model_for_job("job-1")).model_id == "model-1"
    assert await db2.get_job("nope") is None
    await db2.close()
