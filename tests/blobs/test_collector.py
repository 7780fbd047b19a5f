"""A node's blob collector on real records (a one-voter driver) and real files: garbage past
its grace goes, its drop recorded first; live and recent blobs stay."""

from __future__ import annotations

from nexus_node.blobs.collector import BlobCollector
from nexus_node.blobs.store import BlobStore
from nexus_node.jobs.records import JobRecord, JobSpecRecord
from nexus_node.jobs.references import live_blobs
from tests.blobs.helpers import stored_blob
from tests.blocking import allow_blocking
from tests.jobs.test_registry import open_records


async def test_garbage_goes_with_its_placement_and_live_or_recent_blobs_stay(tmp_path):
    driver, records = await open_records(tmp_path)
    with allow_blocking():
        store = BlobStore(tmp_path / "blobs")
    collector = BlobCollector("n1", store, records, lambda: live_blobs(records.jobs.values(), records.models.values(),
                                                                       records.blobs), grace=60)
    try:
        upload = stored_blob(store, b"the job's upload", age=600)
        predictions = stored_blob(store, b"a trial's predictions", age=600)
        refused = stored_blob(store, b"an upload whose job never was", age=600)   # no placement at all
        recent = stored_blob(store, b"stored a moment ago", age=5)
        await records.put_blob(upload, 16, "dataset", job_id="job-1")
        await records.put_blob(predictions, 21, "predictions", job_id="job-1")
        await records.put_job(JobRecord(job_id="job-1", spec=JobSpecRecord(target="y"), state="SEARCHING",
                                        dataset_sha256=upload))

        next_due = await collector.collect()
        with allow_blocking():
            assert next_due == store.path(recent).stat().st_mtime + 60   # when `recent` falls due
            assert not store.has(refused) and store.has(upload) and store.has(predictions) and store.has(recent)
        assert collector.usage == (3, 16 + 21 + 19)

        # The job ends: finalize was the predictions' only reader.
        await records.put_job(JobRecord(job_id="job-1", spec=JobSpecRecord(target="y"), state="COMPLETED",
                                        dataset_sha256=upload))
        await collector.collect()
        assert predictions not in records.blobs   # the drop was recorded, then the file went
        with allow_blocking():
            assert not store.has(predictions) and store.has(upload)

        await records.delete_job("job-1")
        await collector.collect()
        assert records.blobs == {} and collector.usage == (1, 19)
        with allow_blocking():
            assert not store.has(upload) and store.has(recent)
    finally:
        await driver.stop()
