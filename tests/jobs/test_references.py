"""Which blobs the records still need (pure): a job's data while it is recorded, a model's
artifact while it is recorded, whatever a running job made."""

from nexus_node.blobs.replication import BlobInfo
from nexus_node.jobs.records import JobRecord, JobSpecRecord, ModelRecord
from nexus_node.jobs.references import live_blobs


def sha(c: str) -> str:
    return c * 64


def job(job_id: str, state: str, dataset: str = "", files: dict[str, str] | None = None) -> JobRecord:
    return JobRecord(job_id=job_id, spec=JobSpecRecord(target="y"), state=state, dataset_sha256=dataset,
                     prepared={"files": files} if files is not None else {})


def model(model_id: str, job_id: str, artifact: str) -> ModelRecord:
    return ModelRecord(model_id, job_id, "regression", "y", ["x"], [], {}, artifact, 1, 1.0)


def placed(c: str, kind: str, job_id: str = "") -> tuple[str, BlobInfo]:
    return sha(c), BlobInfo(sha(c), 1, kind, {"n1"}, job_id=job_id)


def test_an_ended_job_keeps_its_data_and_model_but_not_its_predictions_or_member_files():
    jobs = [job("job-1", "COMPLETED", sha("d"), {"X_train": sha("s")})]
    models = [model("model-1", "job-1", sha("m"))]
    placements = dict([placed("d", "dataset", "job-1"), placed("s", "shard:X_train", "job-1"),
                       placed("m", "model", "job-1"), placed("p", "predictions", "job-1"),
                       placed("r", "member", "job-1")])
    assert live_blobs(jobs, models, placements) == {sha("d"), sha("s"), sha("m")}


def test_a_running_job_keeps_everything_made_for_it_before_its_record_names_it():
    jobs = [job("job-2", "PREPARING", sha("d"))]
    placements = dict([placed("d", "dataset", "job-2"), placed("s", "shard:X_train", "job-2"),
                       placed("p", "predictions", "job-2")])
    assert live_blobs(jobs, [], placements) == {sha("d"), sha("s"), sha("p")}


def test_a_deleted_job_leaves_only_the_models_it_kept():
    models = [model("model-1", "job-1", sha("m"))]   # kept: `nexus delete job-1 --keep-models`
    placements = dict([placed("d", "dataset", "job-1"), placed("m", "model", "job-1")])
    assert live_blobs([], models, placements) == {sha("m")}


def test_an_upload_whose_job_was_never_recorded_is_garbage():
    # A refused or interrupted submit: the blob names a job id no record has.
    assert live_blobs([job("job-3", "COMPLETED")], [], dict([placed("u", "dataset", "job-9")])) == set()


def test_a_placement_without_a_job_is_kept_only_while_some_job_runs():
    old = dict([placed("p", "predictions")])   # recorded by a node older than job ids on blobs
    assert live_blobs([job("job-4", "SEARCHING")], [], old) == {sha("p")}
    assert live_blobs([job("job-4", "FAILED")], [], old) == set()
