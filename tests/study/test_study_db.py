"""The study tables (study/study_db.py) against Optuna's own journal replay: the same random
journals, applied to both, give the same studies trial for trial (pure: SQLite in memory or in a
temp file, no node)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution, distribution_to_json
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import TrialState

from nexus_node.study.journal import validate_body
from nexus_node.study.ops import Op
from nexus_node.study.study_db import StudyDB

DISTS = [distribution_to_json(d) for d in (
    FloatDistribution(0, 1), FloatDistribution(1e-3, 1, log=True), IntDistribution(1, 8),
    CategoricalDistribution(["a", "b"]), CategoricalDistribution(["a", "b", "c"]))]
TIMES = ["2026-12-01T10:00:00.000001+00:00", "2026-12-02T11:30:00.500000+00:00", None]


class ListBackend(BaseJournalBackend):
    def __init__(self, logs: list[dict[str, Any]]) -> None:
        self.logs = logs

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return self.logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.logs.extend(logs)


def random_journal(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Valid logs (as the validators take them) that often name what does not exist, reuse
    study names, write finished trials, mix distributions and race for WAITING trials."""
    logs: list[dict[str, Any]] = []
    studies = trials = 0

    def op(code: int, **fields: Any) -> None:
        logs.append({"op_code": int(code), "worker_id": "w", **fields})

    for _ in range(n):
        study = rng.randrange(studies + 2)
        trial = rng.randrange(trials + 2)
        kind = rng.random()
        if kind < 0.08 or studies == 0:
            op(Op.CREATE_STUDY, study_name=f"s{rng.randrange(4)}", directions=rng.choice([[1], [2], [1, 2]]))
            studies += 1
        elif kind < 0.11:
            op(Op.DELETE_STUDY, study_id=study)
        elif kind < 0.16:
            code, key = rng.choice([(Op.SET_STUDY_USER_ATTR, "user_attr"), (Op.SET_STUDY_SYSTEM_ATTR, "system_attr")])
            op(code, study_id=study, **{key: {f"k{rng.randrange(3)}": rng.random()}})
        elif kind < 0.32:
            fields: dict[str, Any] = {"study_id": study, "datetime_start": rng.choice(TIMES)}
            if rng.random() < 0.5:   # a template trial, whole
                names = rng.sample(["x", "y", "z"], rng.randrange(3))
                dists = {p: rng.choice(DISTS) for p in names}
                fields.update(
                    state=rng.choice([int(s) for s in TrialState]), distributions=dists,
                    params={p: (rng.randrange(2) if "Categorical" in d else
                                float(rng.randrange(1, 8)) if "Int" in d else rng.uniform(0.01, 1))
                            for p, d in dists.items()},
                    user_attrs={"u": rng.randrange(9)}, system_attrs={}, intermediate_values={"0": 0.5, "3": 0.1},
                    **({"value": None, "values": [1.0, 2.0]} if rng.random() < 0.3 else
                       {"value": rng.random(), "values": None}))
                if rng.random() < 0.5:
                    fields["datetime_complete"] = rng.choice(TIMES[:2])
            op(Op.CREATE_TRIAL, **fields)
            trials += 1
        elif kind < 0.5:
            d = rng.choice(DISTS)
            value = rng.randrange(2) if "Categorical" in d else float(rng.randrange(1, 8)) if "Int" in d else 0.5
            op(Op.SET_TRIAL_PARAM, trial_id=trial, param_name=rng.choice(["x", "y", "z"]),
               param_value_internal=value, distribution=d)
        elif kind < 0.7:
            state = rng.choice([int(s) for s in TrialState])
            fields = {"trial_id": trial, "state": state,
                      "values": rng.choice([None, [rng.random()], [0.1, 0.2]])}
            if state == TrialState.RUNNING:
                fields["datetime_start"] = TIMES[1]
            elif TrialState(state).is_finished():
                fields["datetime_complete"] = TIMES[0]
            op(Op.SET_TRIAL_STATE_VALUES, **fields)
        elif kind < 0.85:
            op(Op.SET_TRIAL_INTERMEDIATE_VALUE, trial_id=trial, step=rng.randrange(5), intermediate_value=rng.random())
        else:
            code, key = rng.choice([(Op.SET_TRIAL_USER_ATTR, "user_attr"), (Op.SET_TRIAL_SYSTEM_ATTR, "system_attr")])
            op(code, trial_id=trial, **{key: {f"a{rng.randrange(3)}": [rng.random()]}})
    return logs


def optuna_view(storage: Any) -> list[Any]:
    """Every live study and its trials, as Optuna's public API reads them."""
    out = []
    for s in sorted(storage.get_all_studies(), key=lambda s: s._study_id):
        out.append((s._study_id, s.study_name, s.directions, s.user_attrs, s.system_attrs,
                    storage.get_all_trials(s._study_id, deepcopy=False)))
    return out


def db_view(db: StudyDB, name: str = "j") -> list[Any]:
    return [(s._study_id, s.study_name, s.directions, s.user_attrs, s.system_attrs, db.trials(name, s._study_id))
            for s in db.studies(name)]


@pytest.mark.parametrize("seed", range(40))
def test_random_journals_apply_as_optuna_replays_them(seed):
    rng = random.Random(seed)
    logs = random_journal(rng, 150)
    validate_body({"name": "j", "logs": logs})   # what the validators let through
    db = StudyDB(cache_studies=2)
    index = 0
    at = 0
    while at < len(logs):   # in commands of one to four logs
        size = rng.randint(1, 4)
        index += 1
        db.apply("j", logs[at:at + size], index)
        at += size
    expected = optuna_view(JournalStorage(ListBackend(logs)))
    assert db_view(db) == expected
    # Read again with the cache cold, from the rows alone.
    assert db_view(_reopened(db)) == expected


def _reopened(db: StudyDB) -> StudyDB:
    fresh = StudyDB()
    db._db.backup(fresh._db)
    return fresh


def test_each_writer_gets_what_optuna_raises_to_it():
    db = StudyDB()
    first = db.apply("j", [{"op_code": Op.CREATE_STUDY, "worker_id": "w", "study_name": "s", "directions": [1]}], 1)
    assert first == [0]
    again, missing, trial = db.apply("j", [
        {"op_code": Op.CREATE_STUDY, "worker_id": "w", "study_name": "s", "directions": [2]},
        {"op_code": Op.CREATE_TRIAL, "worker_id": "w", "study_id": 7, "datetime_start": None},
        {"op_code": Op.CREATE_TRIAL, "worker_id": "w", "study_id": 0, "datetime_start": None}], 2)
    assert type(again).__name__ == "DuplicatedStudyError" and isinstance(missing, KeyError) and trial == 0
    done, late, taken = db.apply("j", [
        {"op_code": Op.SET_TRIAL_STATE_VALUES, "worker_id": "w", "trial_id": 0, "state": 1, "values": [1.0],
         "datetime_complete": TIMES[0]},
        {"op_code": Op.SET_TRIAL_USER_ATTR, "worker_id": "w", "trial_id": 0, "user_attr": {"k": 1}},
        {"op_code": Op.SET_TRIAL_STATE_VALUES, "worker_id": "w", "trial_id": 0, "state": 0, "values": None,
         "datetime_start": TIMES[0]}], 3)
    assert done is None and type(late).__name__ == "UpdateFinishedTrialError" and type(taken) is type(late)
    assert db.applied == 3 and db.trial("j", 0).user_attrs == {}


def test_the_tables_and_their_index_outlive_the_process(tmp_path):
    db = StudyDB(tmp_path / "studies.db")
    logs = random_journal(random.Random(7), 80)
    for i, log in enumerate(logs, start=1):
        db.apply("j", [log], i)
    before = db_view(db)
    db.mark(len(logs) + 5)   # a snapshot taken at a later index, with no journal write since
    db.close()
    again = StudyDB(tmp_path / "studies.db")
    assert again.applied == len(logs) + 5 and db_view(again) == before
    # Closed cleanly, so the next open may skip SQLite's full check; the mark is for one open.
    assert again.opened_clean() and not StudyDB(tmp_path / "studies.db").opened_clean()


def test_only_the_studies_read_last_stay_in_memory():
    db = StudyDB(cache_studies=2)
    logs: list[dict[str, Any]] = []
    for s in range(4):
        logs.append({"op_code": Op.CREATE_STUDY, "worker_id": "w", "study_name": f"s{s}", "directions": [1]})
        logs.extend({"op_code": Op.CREATE_TRIAL, "worker_id": "w", "study_id": s, "datetime_start": None}
                    for _ in range(3))
    db.apply("j", logs, 1)
    for s in range(4):
        assert len(db.trials("j", s)) == 3
    assert sorted(study for _, study in db._cache) == [2, 3]
    # A cached study follows writes; an uncached one is read from its rows.
    db.apply("j", [{"op_code": Op.SET_TRIAL_USER_ATTR, "worker_id": "w", "trial_id": 9, "user_attr": {"k": 1}},
                   {"op_code": Op.SET_TRIAL_USER_ATTR, "worker_id": "w", "trial_id": 0, "user_attr": {"k": 2}}], 2)
    assert db.trials("j", 3)[0].user_attrs == {"k": 1} and db.trial("j", 0).user_attrs == {"k": 2}


def test_what_cannot_be_applied_is_refused_to_its_writer_and_changes_nothing():
    """Values that pass a loose check but break a conversion (an infinite integer parameter, a
    time SQLite or the local zone cannot hold): the same refusal on every node, nothing kept."""
    db = StudyDB()
    db.apply("j", [{"op_code": Op.CREATE_STUDY, "worker_id": "w", "study_name": "s", "directions": [1]},
                   {"op_code": Op.CREATE_TRIAL, "worker_id": "w", "study_id": 0, "datetime_start": None}], 1)
    before = db_view(_reopened(db))
    refused = db.apply("j", [
        {"op_code": Op.SET_TRIAL_PARAM, "worker_id": "w", "trial_id": 0, "param_name": "n",
         "param_value_internal": float("inf"), "distribution": DISTS[2]},
        {"op_code": Op.CREATE_TRIAL, "worker_id": "w", "study_id": 0, "datetime_start": "0001-01-01T00:00:00"},
        {"op_code": Op.SET_TRIAL_STATE_VALUES, "worker_id": "w", "trial_id": 0, "state": 1, "values": [1.0],
         "datetime_complete": "9999-12-31T23:59:59+00:00"},
        {"op_code": Op.CREATE_TRIAL, "worker_id": "w", "study_id": 0, "datetime_start": None,
         "distributions": {"n": DISTS[2]}, "params": {"n": float("nan")}}], 2)
    assert all(isinstance(r, ValueError) for r in refused), refused
    assert db_view(db) == db_view(_reopened(db)) == before and db.applied == 2
    # The validators refuse them before they are ever proposed.
    for log in ({"op_code": Op.SET_TRIAL_PARAM, "worker_id": "w", "trial_id": 0, "param_name": "n",
                 "param_value_internal": float("inf"), "distribution": DISTS[2]},
                {"op_code": Op.DELETE_STUDY, "worker_id": "w", "study_id": 2 ** 63},
                {"op_code": Op.CREATE_TRIAL, "worker_id": "w", "study_id": 0, "datetime_start": "0001-01-01T00:00"}):
        with pytest.raises(ValueError):
            validate_body({"name": "j", "logs": [log]})


def test_a_trial_read_is_a_copy_of_its_own():
    """Optuna's Trial changes the FrozenTrial it holds; the node's stays as committed."""
    db = StudyDB()
    db.apply("j", [{"op_code": Op.CREATE_STUDY, "worker_id": "w", "study_name": "s", "directions": [1]},
                   {"op_code": Op.CREATE_TRIAL, "worker_id": "w", "study_id": 0, "datetime_start": None}], 1)
    db.trials("j", 0)   # in memory
    mine = db.trial("j", 0)
    mine.params["x"] = 1.0
    mine.user_attrs["k"] = 2
    assert db.trial("j", 0).params == {} and db.trials("j", 0)[0].user_attrs == {}


def test_a_snapshot_of_the_previous_version_restores_alike():
    """A node upgraded over a snapshot that holds journal operations (the version before the
    study tables) restores from it with the same ids."""
    logs = random_journal(random.Random(11), 120)
    db = StudyDB()
    db.replace([{"name": "j", "logs": logs}], 50)
    assert db.applied == 50 and db_view(db) == optuna_view(JournalStorage(ListBackend(logs)))


def test_damaged_tables_are_set_aside_and_rebuilt(tmp_path):
    from nexus_node.study.study_db import open_study_tables
    db = open_study_tables(tmp_path)
    db.apply("j", [{"op_code": Op.CREATE_STUDY, "worker_id": "w", "study_name": "s", "directions": [1]}], 3)
    db.close()
    (tmp_path / "studies.db-wal").unlink(missing_ok=True)
    with open(tmp_path / "studies.db", "r+b") as f:
        f.write(b"not a database at all" * 10)
    again = open_study_tables(tmp_path)
    assert again.applied == 0 and again.studies("j") == []
    assert [p.name for p in tmp_path.glob("studies.db.damaged-*")]
