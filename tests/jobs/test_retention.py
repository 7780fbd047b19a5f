"""Which ended jobs retention deletes (pure): never a running one."""

from nexus_node.jobs.records import JobRecord, JobSpecRecord
from nexus_node.jobs.retention import DAY_S, expired

NOW = 100 * DAY_S


def job(job_id: str, state: str, finished_days_ago: float | None = None, created: float = 1.0) -> JobRecord:
    finished = NOW - finished_days_ago * DAY_S if finished_days_ago is not None else 0.0
    return JobRecord(job_id=job_id, spec=JobSpecRecord(target="y"), state=state, created_at=created,
                     finished_at=finished)


JOBS = [job("old", "COMPLETED", 30), job("mid", "FAILED", 10), job("new", "CANCELLED", 1),
        job("run", "SEARCHING"), job("wait", "PENDING")]


def test_keep_jobs_keeps_the_newest_ended_jobs_and_every_running_one():
    assert expired(JOBS, NOW, keep_jobs=2) == ["old"]
    assert expired(JOBS, NOW, keep_jobs=1) == ["old", "mid"]
    assert expired(JOBS, NOW, keep_jobs=5) == []


def test_keep_days_deletes_jobs_that_ended_longer_ago():
    assert expired(JOBS, NOW, keep_days=7) == ["old", "mid"]
    assert expired(JOBS, NOW, keep_days=0.5) == ["old", "mid", "new"]


def test_both_limits_apply_and_zero_means_no_limit():
    assert expired(JOBS, NOW, keep_jobs=2, keep_days=20) == ["old"]
    assert expired(JOBS, NOW, keep_jobs=1, keep_days=20) == ["old", "mid"]
    assert expired(JOBS, NOW) == []


def test_a_job_that_ended_without_a_time_ranks_by_its_creation():
    jobs = [job("a", "FAILED", created=NOW - 5), job("b", "FAILED", created=NOW - 9)]
    assert expired(jobs, NOW, keep_jobs=1) == ["b"]
