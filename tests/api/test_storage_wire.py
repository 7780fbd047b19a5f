"""Optuna's gRPC storage protocol as Nexus speaks it (proto/api.proto, study/wire.py,
api/storage_service.py, study/proxy.py): a real aio server on loopback over a JournalStorage,
Optuna's own storage test suite through ``NexusStorageProxy``, and Optuna's own
``GrpcStorageProxy`` against the same server in the same process."""

from __future__ import annotations

import warnings
from typing import Iterator

import grpc
import optuna
import pytest
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import GrpcStorageProxy, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import StudyDirection
from optuna.testing.pytest_storages import StorageTestCase
from optuna.trial import TrialState

from nexus_node._generated import api_pb2, api_pb2_grpc
from nexus_node.study.proxy import NexusStorageProxy
from tests.optuna_checks import assert_params_kept
from tests.storage_server import storage_server


@pytest.fixture
def port(tmp_path) -> Iterator[int]:
    """A StorageService on a free loopback port over a fresh journal file (writes and reads
    through two JournalStorages of it, as a node holds them)."""
    path = str(tmp_path / "journal.log")
    with storage_server(JournalStorage(JournalFileBackend(path)), JournalStorage(JournalFileBackend(path))) as port:
        yield port


class TestNexusStorageProxy(StorageTestCase):
    @pytest.fixture
    def storage(self, port) -> Iterator[NexusStorageProxy]:
        proxy = NexusStorageProxy(host="127.0.0.1", port=port)
        yield proxy
        proxy.close()

    @pytest.mark.parametrize("param_names", [["a", "b"], ["b", "a"]])
    def test_get_all_trials_params_order(self, storage, param_names) -> None:
        assert_params_kept(storage, param_names)


def test_optunas_own_proxy_and_ours_share_the_server_and_the_process(port) -> None:
    """Both clients' protobuf modules load in one process (our proto/api.proto compiles to the
    same file as Optuna's), and each reads what the other wrote."""
    ours = NexusStorageProxy(host="127.0.0.1", port=port)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # GrpcStorageProxy is "experimental"
        theirs = GrpcStorageProxy(host="127.0.0.1", port=port)
    study = optuna.create_study(storage=ours, study_name="shared", direction="maximize")
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.report(0.25, 3)
    study.tell(trial, 0.5)
    seen = optuna.load_study(study_name="shared", storage=theirs).trials
    assert [(t.state, t.value, t.intermediate_values, t.params) for t in seen] == [
        (TrialState.COMPLETE, 0.5, {3: 0.25}, trial.params)]
    theirs_trial = optuna.load_study(study_name="shared", storage=theirs).ask()
    theirs_trial.set_user_attr("by", "optuna")
    assert ours.get_all_trials(ours.get_study_id_from_name("shared"))[-1].user_attrs == {"by": "optuna"}
    assert [s.study_name for s in optuna.get_all_study_summaries(ours)] == ["shared"]
    ours.close()
    theirs.close()


def test_storage_errors_arrive_as_optunas_exceptions_with_their_message(port) -> None:
    proxy = NexusStorageProxy(host="127.0.0.1", port=port)
    study_id = proxy.create_new_study([StudyDirection.MINIMIZE], "s")
    with pytest.raises(DuplicatedStudyError):
        proxy.create_new_study([StudyDirection.MINIMIZE], "s")
    with pytest.raises(KeyError):
        proxy.get_study_id_from_name("nope")
    trial_id = proxy.create_new_trial(study_id)
    proxy.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0])
    with pytest.raises(UpdateFinishedTrialError, match="finished"):
        proxy.set_trial_user_attr(trial_id, "k", 1)
    proxy.close()
    # An attribute value that is not JSON (no Optuna client sends one) is INVALID_ARGUMENT.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as refused:
        api_pb2_grpc.StorageServiceStub(channel).SetTrialUserAttribute(
            api_pb2.SetTrialUserAttributeRequest(trial_id=trial_id, key="k", value="{not json"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_times_are_sent_as_optuna_5_0_sends_them_and_read_in_either_version_s_form() -> None:
    from datetime import datetime, timezone

    from nexus_node.study import wire

    local = datetime(2026, 1, 2, 3, 4, 5, 6)
    trial = optuna.trial.create_trial(state=TrialState.COMPLETE, value=1.0)
    trial.datetime_start = trial.datetime_complete = local
    msg = wire.trial_to_proto(trial, 7)
    assert msg.datetime_start == "2026-01-02 03:04:05.000006"   # what a 5.0 client parses
    assert wire.trial_from_proto(msg).datetime_start == local
    # Optuna 5.1's server: UTC with its offset, read as local time.
    msg.datetime_start = local.astimezone().astimezone(timezone.utc).isoformat(timespec="microseconds")
    assert "+00:00" in msg.datetime_start and wire.trial_from_proto(msg).datetime_start == local
