"""Domain records <-> nexus.v1 protobuf messages. The only module that knows both."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.cluster.tokens import TokenRecord
from nexus_node.cluster.view import ClusterView, MemberInfo
from nexus_node.jobs.events import JobEvent, TrialView
from nexus_node.jobs.records import JobRecord, JobSpecRecord, ModelRecord
from nexus_node.pipeline.tableformat import TableFormat

TASKS = {"regression": pb.REGRESSION, "binary": pb.BINARY, "multiclass": pb.MULTICLASS}


def spec_from_pb(s: pb.JobSpec) -> JobSpecRecord:
    return JobSpecRecord(
        target=s.target, use_case=s.use_case, max_trials=s.max_trials,
        time_budget_seconds=s.time_budget_seconds, metric=s.metric.strip(), seed=s.seed,
        filename=s.filename, constraints_json=s.constraints_json,
        drop_columns=[c for c in s.drop_columns if c.strip()],
    )


def spec_to_pb(s: JobSpecRecord) -> pb.JobSpec:
    return pb.JobSpec(
        target=s.target, use_case=s.use_case, max_trials=s.max_trials,
        time_budget_seconds=s.time_budget_seconds, metric=s.metric, seed=s.seed,
        filename=s.filename, constraints_json=s.constraints_json, drop_columns=s.drop_columns,
    )


def job_to_pb(j: JobRecord) -> pb.Job:
    t = j.trials
    msg = pb.Job(
        job_id=j.job_id, state=pb.JobState.Value(j.state), spec=spec_to_pb(j.spec),
        message=j.message, task=TASKS.get(j.task, pb.TASK_TYPE_UNSPECIFIED), metric=j.metric,
        maximize=j.maximize, has_best=j.best_value is not None,
        best_value=j.best_value if j.best_value is not None else 0.0,
        trials=pb.TrialCounts(
            complete=t.get("COMPLETE", 0), pruned=t.get("PRUNED", 0), fail=t.get("FAIL", 0),
            running=t.get("RUNNING", 0), waiting=t.get("WAITING", 0), lost=t.get("LOST", 0),
        ),
        model_id=j.model_id, test_metrics=j.test_metrics,
        feature_importance=[
            pb.FeatureImportance(column=k, importance=v) for k, v in j.feature_importance.items()
        ],
        summary=j.summary, constraints_source=j.constraints_source,
        constraints_json=json.dumps(j.constraints) if j.constraints else "",
        profile_json=json.dumps(j.profile) if j.profile else "",
        created_at=j.created_at, started_at=j.started_at, finished_at=j.finished_at,
        seed=j.seed, dataset_sha256=j.dataset_sha256, dataset_bytes=j.dataset_bytes,
        encoding=j.encoding, study_name=j.study_name,
        best_params_json=json.dumps(j.best_params) if j.best_params else "", node_id=j.node_id,
        constraints_model=j.constraints_model, constraints_rationale=j.constraints_rationale,
        constraints_fallback=j.constraints_fallback, summary_source=j.summary_source,
        summary_model=j.summary_model, summary_fallback=j.summary_fallback,
        evaluated_model_rows=j.evaluated_model_rows, test_rows=j.test_rows,
        final_model_rows=j.final_model_rows, members=members_to_pb(j.members), model_selection=j.model_selection,
        input_format=_describe_format(j.input_format),
    )
    return msg


def _describe_format(recorded: dict[str, str]) -> str:
    """A job's recorded table format in words ("" for a job recorded before formats were)."""
    if not recorded:
        return ""
    try:
        return TableFormat.from_dict(recorded).describe()
    except ValueError:
        return ""


def trial_to_pb(t: TrialView) -> pb.TrialInfo:
    return pb.TrialInfo(
        number=t.number, state=t.state, value=t.value if t.value is not None else 0.0,
        has_value=t.value is not None, params_json=json.dumps(t.params),
        duration_seconds=t.duration_seconds, node_id=t.node_id, message=t.message,
        last_step=t.last_step, retry_of=t.retry_of,
    )


def event_to_pb(e: JobEvent) -> pb.JobEvent:
    msg = pb.JobEvent(kind=pb.JobEventKind.Value(e.kind), job=job_to_pb(e.job))
    if e.trial is not None:
        msg.trial.CopyFrom(trial_to_pb(e.trial))
    return msg


def model_to_pb(m: ModelRecord) -> pb.Model:
    return pb.Model(
        model_id=m.model_id, job_id=m.job_id, task=TASKS.get(m.task, pb.TASK_TYPE_UNSPECIFIED),
        target=m.target, input_columns=m.input_columns, classes=m.classes,
        test_metrics=m.test_metrics, artifact_sha256=m.artifact_sha256,
        artifact_bytes=m.artifact_bytes, created_at=m.created_at, family=m.family,
        params_json=json.dumps(m.params), members=members_to_pb(m.members), selection=m.selection,
    )


def members_to_pb(members: list[dict[str, Any]]) -> list[pb.EnsembleMember]:
    return [pb.EnsembleMember(trial=int(m.get("trial") or 0), family=str(m.get("family", "")),
                              weight=float(m.get("weight", 0.0)), epochs_trained=int(m.get("epochs_trained", 0)),
                              params_json=json.dumps(m.get("params") or {}), node_id=str(m.get("node_id") or ""))
            for m in members]


def prediction_to_pb(row: int, p: dict[str, Any]) -> pb.Prediction:
    """One predicted row as the serve runner sends it (``Predictor.predict``)."""
    return pb.Prediction(row=row, label=str(p["label"]), value=float(p["value"]),
                         probabilities=p.get("probabilities", []), outside_range=p.get("outside_range", []),
                         unseen_categories=p.get("unseen_categories", []), empty=bool(p.get("empty", False)))


def predict_warnings_to_pb(w: dict[str, Any]) -> pb.PredictWarnings:
    """The input's counts (``input_checks.warning_counts``)."""
    return pb.PredictWarnings(rows=int(w.get("rows", 0)), unseen_category_rows=int(w.get("unseen_category_rows", 0)),
                              unseen_categories={str(k): int(v) for k, v in w.get("unseen_categories", {}).items()},
                              empty_rows=int(w.get("empty_rows", 0)))


def token_to_pb(t: TokenRecord) -> pb.TokenInfo:
    """Name, role and age: never the secret, nor its digest."""
    # A token's role is a client role (READ, SUBMIT, ADMIN), each a TokenRole of the same name
    # and number. EnumTypeWrapper.Value is untyped (protobuf ships no stubs here).
    role: pb.TokenRole = pb.TokenRole.Value(t.role.name)
    return pb.TokenInfo(name=t.name, role=role, created_at=t.created_at)


_MEMBER_FIELDS = [f.name for f in dataclasses.fields(MemberInfo) if f.name not in ("role", "running")]


def member_to_pb(m: MemberInfo) -> pb.NodeInfo:
    return pb.NodeInfo(role=pb.NodeRole.Value(m.role) if m.role else pb.NODE_ROLE_UNSPECIFIED,
                       running=m.running, **{name: getattr(m, name) for name in _MEMBER_FIELDS})


def member_from_pb(n: pb.NodeInfo) -> MemberInfo:
    """A member's own description (its ``PeerService.Describe`` answer)."""
    role = pb.NodeRole.Name(n.role) if n.role != pb.NODE_ROLE_UNSPECIFIED else ""
    return MemberInfo(role=role, running=list(n.running), **{name: getattr(n, name) for name in _MEMBER_FIELDS})


def cluster_to_pb(c: ClusterView) -> pb.Cluster:
    return pb.Cluster(
        cluster_name=c.cluster_name, coordinator_id=c.coordinator_id, term=c.term,
        nodes=[member_to_pb(n) for n in c.nodes],
        discovered=[pb.DiscoveredPeer(node_id=p.node_id, address=p.address, source=p.source, last_seen=p.last_seen)
                    for p in c.discovered])
