"""Optuna's own storage test suite through the gRPC ``StorageService`` of a follower of a real
3-process cluster: every write goes client → follower's StorageService → its JournalStorage →
forwarded to the coordinator → committed by a majority → applied on the follower → answered.

All tests share the cluster (one study journal per cluster), so each starts by deleting the
studies the previous one left: the suite assumes an empty storage.
"""

from __future__ import annotations

import warnings
from typing import Iterator

import pytest
from optuna.storages import GrpcStorageProxy
from optuna.testing.pytest_storages import StorageTestCase

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from tests.clusters import cluster_until, three_voters
from tests.conftest import NodeProcess, free_port
from tests.optuna_checks import assert_params_kept


@pytest.fixture(scope="module")
def follower_address(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("optuna-suite")
    ports = [free_port() for _ in range(3)]
    seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
    nodes = []
    try:
        for i, port in enumerate(ports):
            nodes.append(NodeProcess(root / f"n{i}", "--slots", "1", "--seeds", seeds, "--no-mdns",
                                     port=port).start())
        view = cluster_until(nodes[0].address, three_voters)
        yield next(n.address for n in view.nodes if n.role != pb.COORDINATOR)
    finally:
        for n in nodes:
            n.stop()


class TestStorageServiceOnAFollower(StorageTestCase):
    @pytest.fixture
    def storage(self, follower_address) -> GrpcStorageProxy:
        host, port = follower_address.rsplit(":", 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # GrpcStorageProxy is "experimental"
            storage = GrpcStorageProxy(host=host, port=int(port))
        storage.wait_server_ready(timeout=30)
        for study in storage.get_all_studies():
            storage.delete_study(study._study_id)
        return storage

    @pytest.mark.parametrize("param_names", [["a", "b"], ["b", "a"]])
    def test_get_all_trials_params_order(self, storage, param_names) -> None:
        assert_params_kept(storage, param_names)
