"""A compacted Optuna journal: as many operations as the studies have trials, not writes.

A study's journal holds every write ever made to it: a trial of 100 epochs is its creation,
its parameters, about 100 intermediate values, its attributes and its end. Replayed, a journal
``compact`` returns gives the same studies, trial for trial, from about one operation per
trial (the first step of log compaction, issue 23: a snapshot holds its studies this way, and
a node restored from it replays this instead of the whole history). It is plain JSON in the
journal's own format, never a pickle (Optuna's own journal snapshot pickles its replay state).

Ids: later operations name studies and trials by id, and so do running tasks, so a restored
node must number them as every other node does. Optuna's ``JournalStorage`` numbers studies in
creation order, deleted ones included, and trials globally in creation order, those of
deleted studies included. So the compacted journal keeps every creation and deletion that took
effect, in their order, and folds every other write into them: each trial is one CREATE_TRIAL
that carries the whole trial (the template form of ``JournalStorage.create_new_trial``: state,
values, parameters and their distributions, attributes, intermediate values, start and end).
What this costs a deleted study is one small operation per trial it had; see :func:`compact`.

Pure: logs in, logs out (Optuna's storage replays them in memory, read through its public API).
"""

from __future__ import annotations

from datetime import timezone
from typing import Any, Iterable

from optuna.distributions import distribution_to_json
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import FrozenTrial

from nexus_node.study.ops import Op

#: The worker id compacted operations carry (each Optuna journal operation names its writer).
WORKER = "nexus-compaction"


class ListBackend(BaseJournalBackend):
    """A journal in a list (Optuna's backends are files and Redis)."""

    def __init__(self, logs: Iterable[dict[str, Any]] = ()) -> None:
        self.logs = list(logs)

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return self.logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.logs.extend(logs)


def replay(logs: Iterable[dict[str, Any]]) -> JournalStorage:
    """An Optuna storage holding what ``logs`` describe (in memory)."""
    return JournalStorage(ListBackend(logs))


def _skeleton(logs: list[dict[str, Any]]) -> list[tuple[str, int, int | str, list[int]]]:
    """The creations and deletions of ``logs`` that take effect, in order, with the ids Optuna
    gives them: ``("study", study_id, name, directions)``, ``("trial", trial_id, study_id, [])``,
    ``("delete", study_id, "", [])``. (``JournalStorage``'s replay skips a creation under a name
    in use and any write naming a study that does not exist; studies and trials are numbered
    in creation order.)"""
    out: list[tuple[str, int, int | str, list[int]]] = []
    live: dict[int, str] = {}
    studies = trials = 0
    for log in logs:
        op = log["op_code"]
        if op == Op.CREATE_STUDY:
            if log["study_name"] not in live.values():
                live[studies] = log["study_name"]
                out.append(("study", studies, log["study_name"], [int(d) for d in log["directions"]]))
                studies += 1
        elif op == Op.DELETE_STUDY:
            if live.pop(log["study_id"], None) is not None:
                out.append(("delete", log["study_id"], "", []))
        elif op == Op.CREATE_TRIAL:
            if log["study_id"] in live:
                out.append(("trial", trials, log["study_id"], []))
                trials += 1
    return out


def _op(op: int, **fields: Any) -> dict[str, Any]:
    return {"op_code": int(op), "worker_id": WORKER, **fields}


def _utc(dt: Any) -> str | None:
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds") if dt is not None else None


def _trial_op(study_id: int, t: FrozenTrial) -> dict[str, Any]:
    """One CREATE_TRIAL that recreates ``t`` whole (as ``create_new_trial(template_trial=t)`` writes it)."""
    fields: dict[str, Any] = {
        "study_id": study_id, "state": int(t.state),
        "datetime_start": _utc(t.datetime_start),
        "distributions": {k: distribution_to_json(d) for k, d in t.distributions.items()},
        "params": {k: t.distributions[k].to_internal_repr(v) for k, v in t.params.items()},
        "user_attrs": t.user_attrs, "system_attrs": t.system_attrs,
        "intermediate_values": {str(k): v for k, v in t.intermediate_values.items()},
    }
    if t.values is not None and len(t.values) > 1:
        fields["value"], fields["values"] = None, list(t.values)
    else:
        fields["value"], fields["values"] = t.value, None
    if t.datetime_complete is not None:
        fields["datetime_complete"] = _utc(t.datetime_complete)
    return _op(Op.CREATE_TRIAL, **fields)


def compact(logs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A journal that replays to the studies ``logs`` replay to, with the same ids.

    The creations and deletions keep their order (so the ids, and a name freed by a deletion
    and used again, come out the same); every other write is folded into them: a live study's
    attributes follow its creation, and each trial of a live study is created whole. A
    trial of a study deleted since is created empty (its id must not move), so a deleted study
    costs one small operation per trial it had.
    """
    logs = list(logs)
    skeleton = _skeleton(logs)
    storage = replay(logs)
    live = {storage.get_study_id_from_name(s.study_name) for s in storage.get_all_studies()}
    out: list[dict[str, Any]] = []
    for kind, ident, ref, directions in skeleton:
        if kind == "study":
            out.append(_op(Op.CREATE_STUDY, study_name=ref, directions=directions))
            if ident in live:
                for key, value in storage.get_study_user_attrs(ident).items():
                    out.append(_op(Op.SET_STUDY_USER_ATTR, study_id=ident, user_attr={key: value}))
                for key, value in storage.get_study_system_attrs(ident).items():
                    out.append(_op(Op.SET_STUDY_SYSTEM_ATTR, study_id=ident, system_attr={key: value}))
        elif kind == "trial":
            assert isinstance(ref, int)
            if ref in live:
                out.append(_trial_op(ref, storage.get_trial(ident)))
            else:
                out.append(_op(Op.CREATE_TRIAL, study_id=ref, datetime_start=None))
        else:
            out.append(_op(Op.DELETE_STUDY, study_id=ident))
    return out
