"""Which blobs the records still need (pure): what the blob collector keeps (blobs/gc.py).

* A job's upload (``dataset_sha256``) and prepared arrays (``prepared["files"]``), for as long
  as the job is recorded: `nexus show` names them and a resumed job reads them.
* A model's artifact, for as long as the model is recorded (it serves predictions).
* Every blob made for a job that has not ended (its placement's ``job_id``): shards before
  the job records them, trial predictions and ensemble member files until finalize has read
  them, an artifact before its model is recorded. Once the job ends, predictions and member
  files are garbage: finalize was their only reader.
* A placement recorded without a job (by a node older than job ids on blobs) is kept while any
  job runs, since it may be one of them.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from nexus_node.blobs.replication import BlobInfo
from nexus_node.jobs.records import JobRecord, ModelRecord


def live_blobs(jobs: Iterable[JobRecord], models: Iterable[ModelRecord],
               placements: Mapping[str, BlobInfo]) -> set[str]:
    """The sha256 of every blob a record needs now (see the module docstring)."""
    live: set[str] = set()
    running: set[str] = set()
    for job in jobs:
        if job.dataset_sha256:
            live.add(job.dataset_sha256)
        live.update(str(sha) for sha in (job.prepared.get("files") or {}).values())
        if not job.terminal:
            running.add(job.job_id)
    live.update(m.artifact_sha256 for m in models)
    for sha, info in placements.items():
        if info.job_id in running or (not info.job_id and running):
            live.add(sha)
    return live
