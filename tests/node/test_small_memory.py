"""A node told it has 512 MB (a free-tier machine) runs a job of both model families with
one slot and one library family per runner process."""

from __future__ import annotations

import json
from pathlib import Path

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from tests.node.helpers import FAST, stub, submit, watch_until_end


def _runner_families(pid: int) -> list[str]:
    """The --family of each runner process the node has now."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"nexus_node.runner.main" in argv:
                found.append(argv[argv.index(b"--family") + 1].decode())
    return found


def test_a_512_mb_node_runs_both_families_one_runner_family_at_a_time(node_factory, insurance_csv):
    node = node_factory("small", "--memory-mb", "512").start()
    s = stub(node.address)
    both = json.dumps({**json.loads(FAST), "families": ["mlp", "gbt"]})
    job, _ = watch_until_end(s, submit(s, insurance_csv, "charges", max_trials=8, seed=2,
                                       constraints_json=both).job_id)
    assert job.state == pb.COMPLETED, job.message
    assert s.GetCluster(pb.GetClusterRequest()).nodes[0].slots_total == 1
    trials = s.ListTrials(pb.ListTrialsRequest(job_id=job.job_id)).trials
    ran = {json.loads(t.params_json).get("family", "mlp") for t in trials if t.state in ("COMPLETE", "PRUNED")}
    assert ran == {"mlp", "gbt"}, ran
    # The work runner left is of one family (never "any"); the finalize that ended the job
    # ran in it.
    assert set(_runner_families(node.proc.pid)) <= {"networks", "tables"}
    assert _runner_families(node.proc.pid)
