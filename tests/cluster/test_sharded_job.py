"""A job whose prepared arrays come in row shards (issue 24), on a real three-process cluster
started with ``--shard-mb 1``: every shard is a blob of its own, placed on ``--replicas``
nodes; each worker fetches the shards of the splits its trial reads (never the test split's)
and the job completes and serves from every node."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from tests.clusters import start_cluster
from tests.node.helpers import predict, stub, submit, watch_until_end

pytestmark = pytest.mark.timeout(300)


def _wide_table(path: Path) -> Path:
    """7,000 rows (more than cross-validation takes: one network a trial), eight 12-valued
    categories and three numbers: about 160 encoded features, 2.6 MB of training inputs."""
    rng = np.random.default_rng(0)
    n = 7_000
    columns = {f"c{i}": rng.choice([f"v{j}" for j in range(12)], size=n) for i in range(8)}
    columns.update({f"x{i}": np.round(rng.normal(size=n), 3) for i in range(3)})
    signal = columns["x0"] + (columns["c0"] == "v1") - (columns["c1"] == "v2") + 0.5 * rng.normal(size=n)
    columns["label"] = np.where(signal > 0, "up", "down")
    pd.DataFrame(columns).to_csv(path, index=False)
    return path


def test_a_job_in_row_shards_runs_on_every_node_and_each_fetches_what_its_trials_read(node_factory, tmp_path):
    csv = _wide_table(tmp_path / "wide.csv")
    nodes = start_cluster(node_factory, 3, "--shard-mb", "1")
    job_id = submit(stub(nodes[0].address), csv, "label", max_trials=3, seed=2).job_id
    job, _ = watch_until_end(stub(nodes[1].address), job_id)
    assert job.state == pb.COMPLETED, job.message
    trials = stub(nodes[0].address).ListTrials(pb.ListTrialsRequest(job_id=job_id)).trials
    assert len({t.node_id for t in trials}) == 3      # each node ran a trial
    # Blobs by node. A full 1 MB shard holds more rows than the validation or test split has:
    # the blobs of that size are the training split's full shards, and every node, having run
    # a trial, holds every one of them.
    held = {n.address: {p.name: p.stat().st_size for p in (n.data_dir / "blobs").rglob("*")
                        if p.is_file() and len(p.name) == 64} for n in nodes}
    full = max(size for blobs in held.values() for size in blobs.values())
    assert (1 << 20) - 8192 < full <= (1 << 20) + 256, full
    train_shards = {sha for blobs in held.values() for sha, size in blobs.items() if size == full}
    assert len(train_shards) == 2, held
    assert all(train_shards <= set(blobs) for blobs in held.values()), held
    rows = csv.read_text().splitlines(keepends=True)[:6]
    for node in nodes:
        _, preds = predict(stub(node.address), job.model_id, "".join(rows).encode())
        assert len(preds) == 5
