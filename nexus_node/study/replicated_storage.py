"""The Optuna storage of a node: reads from its study tables, writes through consensus.

:class:`ReplicatedStorage` is a ``BaseStorage`` with the behaviour of Optuna's ``JournalStorage``
(the same journal operations, the same replay rules, the same errors), except where the state
lives: in the node's study tables (:mod:`nexus_node.study.study_db`), shared by every storage
of the node, rather than in a replay of its own in memory. A write builds Optuna's journal log,
commits it (:meth:`ReplicatedJournal.write`), and returns what applying it gave this writer:
the id of what it created, or the error Optuna's replay raises to the worker that wrote it
(a study name in use, a finished trial). Reads never leave the node.

Batches: a trial's epochs, its end, its parameters or its failure are several writes that
belong together. Inside ``with storage.batch() as batch:`` every write *this thread* makes is
held (other threads write as usual; a held write changes nothing yet, and whoever wrote it
keeps the value on its own copy, as ``Trial`` does); ``batch.last()`` says the next write is
the batch's last, and it commits every held log with its own as one command: one consensus
round. The command is applied on one trial whose state, if written, comes last: either the trial
was running when it was applied and every write applies, or it had finished and none does, and
the batch's last write raises the refusal once.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import uuid
from datetime import datetime, timezone
from typing import Any, Container, Iterator, Sequence

from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nexus_node.study.journal import _LIVE, DEFAULT_NAME, ReplicatedJournal
from nexus_node.study.ops import Op
from nexus_node.study.study_db import UNUPDATABLE
from nexus_node.study.wire import StudyRecord

#: Optuna's default name prefix for a study created without a name.
DEFAULT_STUDY_NAME_PREFIX = "no-name-"


def _now() -> str:
    return datetime.now(tz=timezone.utc).isoformat(timespec="microseconds")


def _utc(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(timezone.utc).isoformat(timespec="microseconds")


class Batch:
    """The logs one thread holds back (see the module docstring)."""

    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []
        self.closing = False

    def last(self) -> None:
        """The next write on this thread is the batch's last: it commits every held log."""
        self.closing = True


class ReplicatedStorage(BaseStorage):
    """An Optuna storage over journal ``name`` of a node (see the module docstring).

    Example:
        ``optuna.create_study(storage=journal.storage())``, from any thread but the loop's.

    Args:
        journal: The node's :class:`ReplicatedJournal`.
        name: Which journal of the log.
        timeout: Seconds a write keeps trying (default: the driver's propose timeout).
    """

    def __init__(self, journal: ReplicatedJournal, name: str = DEFAULT_NAME, timeout: float | None = None) -> None:
        self._journal, self._name, self._timeout = journal, name, timeout
        self._db = journal.db
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"node_id": self._journal.driver.node_id, "name": self._name, "timeout": self._timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        journal = _LIVE.get(state["node_id"])
        if journal is None:
            raise RuntimeError(f"node {state['node_id']} does not run in this process: its storage can "
                               "only be unpickled next to it")
        self.__init__(journal, state["name"], state["timeout"])   # type: ignore[misc]

    # ---- writes --------------------------------------------------------------------------------

    def _write(self, op: int, **fields: Any) -> Any:
        """Commits one log (or holds it, in a batch); returns its outcome, raising a refusal."""
        log = {"op_code": int(op), "worker_id": f"{self._journal.writer_prefix}{threading.get_ident()}", **fields}
        batch: Batch | None = getattr(self._local, "batch", None)
        if batch is not None:
            batch.logs.append(log)
            if not batch.closing:
                return None
            logs, batch.logs = batch.logs, []
            self._local.batch = None   # written: this thread writes as usual again
        else:
            logs = [log]
        outcomes = self._journal.write(self._name, logs, self._timeout)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        return outcomes[-1]

    @contextlib.contextmanager
    def batch(self) -> Iterator[Batch]:
        """Holds this thread's writes until the write after :meth:`Batch.last`.

        Raises:
            RuntimeError: batches nested, or the block ended with writes held and no last
                write (they are dropped). On an exception in the block the held writes are
                dropped.
        """
        if getattr(self._local, "batch", None) is not None:
            raise RuntimeError("storage batches do not nest")
        batch = self._local.batch = Batch()
        try:
            yield batch
        finally:
            self._local.batch = None
        if batch.logs:
            raise RuntimeError(f"a storage batch ended with {len(batch.logs)} writes held: call last() "
                               "before its last write")

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        name = study_name if study_name is not None else DEFAULT_STUDY_NAME_PREFIX + str(uuid.uuid4())
        return int(self._write(Op.CREATE_STUDY, study_name=name, directions=[int(d) for d in directions]))

    def delete_study(self, study_id: int) -> None:
        self._write(Op.DELETE_STUDY, study_id=study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._write(Op.SET_STUDY_USER_ATTR, study_id=study_id, user_attr={key: value})

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._write(Op.SET_STUDY_SYSTEM_ATTR, study_id=study_id, system_attr={key: value})

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        fields: dict[str, Any] = {"study_id": study_id, "datetime_start": _now()}
        if template_trial is not None:
            t = template_trial
            fields["state"] = int(t.state)
            if t.values is not None and len(t.values) > 1:
                fields["value"], fields["values"] = None, list(t.values)
            else:
                fields["value"], fields["values"] = t.value, None
            fields["datetime_start"] = _utc(t.datetime_start)
            if t.datetime_complete is not None:
                fields["datetime_complete"] = _utc(t.datetime_complete)
            fields["distributions"] = {k: distribution_to_json(d) for k, d in t.distributions.items()}
            fields["params"] = {k: t.distributions[k].to_internal_repr(v) for k, v in t.params.items()}
            fields["user_attrs"] = t.user_attrs
            fields["system_attrs"] = t.system_attrs
            fields["intermediate_values"] = {str(k): v for k, v in t.intermediate_values.items()}
        return int(self._write(Op.CREATE_TRIAL, **fields))

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        self._write(Op.SET_TRIAL_PARAM, trial_id=trial_id, param_name=param_name,
                    param_value_internal=param_value_internal, distribution=distribution_to_json(distribution))

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        fields: dict[str, Any] = {"trial_id": trial_id, "state": int(state),
                                  "values": None if values is None else list(values)}
        if state == TrialState.RUNNING:
            fields["datetime_start"] = _now()
            # As JournalStorage: popping a WAITING trial another worker took is no write at all.
            existing = self.get_trial(trial_id)
            if existing.state.is_finished():
                raise UpdateFinishedTrialError(UNUPDATABLE.format(number=existing.number))
            if existing.state != TrialState.WAITING:
                return False
        elif state.is_finished():
            fields["datetime_complete"] = _now()
        outcome = self._write(Op.SET_TRIAL_STATE_VALUES, **fields)
        return outcome is not False

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._write(Op.SET_TRIAL_INTERMEDIATE_VALUE, trial_id=trial_id, step=step,
                    intermediate_value=intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._write(Op.SET_TRIAL_USER_ATTR, trial_id=trial_id, user_attr={key: value})

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._write(Op.SET_TRIAL_SYSTEM_ATTR, trial_id=trial_id, system_attr={key: value})

    # ---- reads ---------------------------------------------------------------------------------

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._db.study_id(self._name, study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._db.study(self._name, study_id).study_name

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._db.study(self._name, study_id).directions

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._db.study(self._name, study_id).user_attrs

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._db.study(self._name, study_id).system_attrs

    def get_all_studies(self) -> list[StudyRecord]:   # type: ignore[override]
        return self._db.studies(self._name)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._db.trial_id(self._name, study_id, trial_number)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._db.trial(self._name, trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = self._db.trials(self._name, study_id, states)
        return copy.deepcopy(trials) if deepcopy else trials

    def study_of_trial(self, trial_id: int) -> int:
        """The id of the study trial ``trial_id`` belongs to.

        Raises:
            KeyError: no such trial (or its study was deleted).
        """
        return self._db.study_of_trial(self._name, trial_id)
