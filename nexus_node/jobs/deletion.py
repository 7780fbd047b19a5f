"""Deleting an ended job (its study, its models unless kept, its record) or a model.

Any node deletes for a user, as any node cancels: the study's deletion is a journal write and
the records' deletions are ``records`` writes, so every node drops them as it applies them.
The coordinator deletes for retention (:mod:`~nexus_node.jobs.retention`), its writes fenced
to its term. The blobs follow: once no record needs them, every node's blob collector removes
its copies (:mod:`nexus_node.jobs.references`, :mod:`nexus_node.blobs.gc`).

Order: the study first, then the models, then the job. A deletion cut short (the node stops,
no quorum) leaves a job that a second ``nexus delete`` finishes; the reverse order could leave
a study that no record names any more and nothing would ever delete.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nexus_node.errors import FailedPrecondition, InvalidInput, NotFound
from nexus_node.jobs.context import JobContext
from nexus_node.jobs.records import ModelRecord
from nexus_node.study import studies


@dataclass
class DeletedJob:
    job_id: str
    deleted_models: list[str] = field(default_factory=list)
    kept_models: list[str] = field(default_factory=list)
    study_deleted: bool = False


async def delete_job(ctx: JobContext, job_id: str, keep_models: bool = False,
                     term: int | None = None) -> DeletedJob:
    """Deletes ended job ``job_id``: its study, its models unless ``keep_models``, its record.

    Raises:
        InvalidInput: no id.
        NotFound: no such job.
        FailedPrecondition: the job has not ended.
    """
    if not job_id.strip():
        raise InvalidInput("the job id is empty: pass one (`nexus jobs` lists them)")
    job = await ctx.db.get_job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}: `nexus jobs` lists the jobs this cluster has")
    if not job.terminal:
        raise FailedPrecondition(f"job {job_id} is still {job.state}: cancel it first (`nexus cancel {job_id}`), "
                                 f"then delete it")
    study_deleted = bool(job.study_name) and await asyncio.to_thread(studies.delete_study, ctx.storage,
                                                                     job.study_name)
    models = sorted(m.model_id for m in await ctx.db.list_models() if m.job_id == job_id)
    if not keep_models:
        for model_id in models:
            await ctx.db.delete_model(model_id, term)
    await ctx.db.delete_job(job_id, term)
    return DeletedJob(job_id, [] if keep_models else models, models if keep_models else [], study_deleted)


async def delete_model(ctx: JobContext, model_id: str, term: int | None = None) -> ModelRecord:
    """Deletes model ``model_id`` (its artifact goes with the blob collector); its job stays.

    Raises:
        InvalidInput: no id.
        NotFound: no such model.
        FailedPrecondition: its job has not ended (it is recording the model now).
    """
    if not model_id.strip():
        raise InvalidInput("the model id is empty: pass one (`nexus models` lists them)")
    model = await ctx.db.get_model(model_id)
    if model is None:
        raise NotFound(f"no model {model_id!r}: `nexus models` lists the models")
    job = await ctx.db.get_job(model.job_id)
    if job is not None and not job.terminal:
        raise FailedPrecondition(f"model {model_id} belongs to job {job.job_id}, which is still {job.state}: "
                                 f"delete the model once the job has ended")
    await ctx.db.delete_model(model_id, term)
    return model
