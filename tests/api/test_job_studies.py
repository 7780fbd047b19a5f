"""A job's Optuna study is the cluster's: through the node's StorageService nobody deletes it or
changes a finished job's trials, not even a caller the node lets write job studies (this node
is open on loopback, as a node is to the holder of its token). Any other study is a plain,
fully writable Optuna study. Real Optuna clients (Optuna's own ``GrpcStorageProxy`` and ours)
against a real node with a finished job."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import grpc
import optuna
import pytest
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import GrpcStorageProxy

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.study.proxy import NexusStorageProxy
from tests.node.helpers import nexus, stub, submit, watch_until_end


@pytest.fixture(scope="module")
def finished_job(node_address: str, insurance_csv: Path) -> pb.Job:
    s = stub(node_address)
    job, _ = watch_until_end(s, submit(s, insurance_csv, "charges", max_trials=2, seed=25).job_id)
    assert job.state == pb.COMPLETED, job.message
    return job


def _storages(address: str) -> tuple[NexusStorageProxy, GrpcStorageProxy]:
    host, port = address.rsplit(":", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # GrpcStorageProxy is "experimental"
        return NexusStorageProxy(host=host, port=int(port)), GrpcStorageProxy(host=host, port=int(port))


def _trials(address: str, job_id: str) -> list[dict]:
    proc = nexus(address, "trials", job_id, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _refused(call) -> grpc.RpcError:
    """The status a refused call got: both proxies raise UpdateFinishedTrialError for
    FAILED_PRECONDITION with the gRPC error chained, except where Optuna's passes the gRPC
    error on as it is."""
    with pytest.raises((grpc.RpcError, UpdateFinishedTrialError)) as info:
        call()
    error = info.value if isinstance(info.value, grpc.RpcError) else info.value.__cause__
    assert isinstance(error, grpc.RpcError), info.value
    return error


def test_a_finished_job_s_study_is_neither_deleted_nor_changed_and_other_studies_are_free(node_address, finished_job):
    job_id, name = finished_job.job_id, finished_job.study_name
    before = _trials(node_address, job_id)
    assert before
    ours, optunas = _storages(node_address)
    study = optuna.load_study(study_name=name, storage=ours)   # reads stay open
    done = study.trials[0]
    owner = f"study {name!r} belongs to job {job_id} (COMPLETED) and is written only by the cluster"

    # Deleting it, through either client: refused, saying whose it is.
    for storage in (ours, optunas):
        error = _refused(lambda: optuna.delete_study(study_name=name, storage=storage))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert error.details().startswith(f"DeleteStudy: {owner}"), error.details()

    # Changing its trials or the study: refused the same way.
    changes = {
        "a new finished trial": lambda: study.add_trial(optuna.trial.create_trial(
            params=done.params, distributions=done.distributions, value=0.999999)),
        "a new running trial": lambda: optunas.create_new_trial(study._study_id),
        "a trial's attribute": lambda: optunas.set_trial_user_attr(done._trial_id, "config", {}),
        "a trial's state": lambda: ours.set_trial_state_values(done._trial_id, optuna.trial.TrialState.FAIL),
        "the study's attribute": lambda: study.set_user_attr("forged", True),
    }
    for what, change in changes.items():
        error = _refused(change)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, (what, error.details())
        assert owner in error.details() and "the job has ended" in error.details(), (what, error.details())

    # Creating it again: Optuna's answer for an existing study, so load_if_exists loads it.
    with pytest.raises(DuplicatedStudyError):
        optuna.create_study(study_name=name, storage=ours)
    assert len(optuna.create_study(study_name=name, storage=optunas, load_if_exists=True).trials) == len(before)

    # The job, its trials and its study still agree.
    assert _trials(node_address, job_id) == before
    assert [(t.number, t.state, t.value) for t in optuna.load_study(study_name=name, storage=ours).trials] == \
        [(t.number, t.state, t.value) for t in study.trials]
    assert stub(node_address).GetJob(pb.GetJobRequest(job_id=job_id)).state == pb.COMPLETED

    # A study of no job, through the same clients: created, written, asked and told, deleted.
    for storage in (ours, optunas):
        mine = f"mine-{type(storage).__name__}"
        own = optuna.create_study(study_name=mine, storage=storage, direction="maximize")
        own.set_user_attr("owner", "me")
        trial = own.ask()
        own.tell(trial, trial.suggest_float("x", 0, 1))
        own.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert len(own.trials) == 3 and own.user_attrs == {"owner": "me"}
        optuna.delete_study(study_name=mine, storage=storage)
        assert mine not in optuna.get_all_study_names(storage)
