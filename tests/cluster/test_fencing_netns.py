"""A coordinator cut off by the network while it decides (needs root; issue 22).

Three real nodes, each on a host of its own (:mod:`tests.netns`). Every slot runs a long trial
when the coordinator's cable is pulled. Cut off, it still believes it leads for a few seconds
(until CheckQuorum steps it down), and in that time it declares the two others dead (their
heartbeats stop reaching it) and writes their trials off as lost, and would ask for new ones.
Those writes cannot commit while it is alone; they are fenced to its term, so once the link is
back they must not commit either, neither through the new coordinator (forwarded) nor by the
old one (re-elected later). Meanwhile the two others elect a new coordinator, which adopts the
trials they run.

After the job: the trials that ran on the two others at the cut completed where they ran,
counted once; the only trial lost is the one on the cut-off node; and no trial in the study was
asked for by the old coordinator after the cut.
"""

from __future__ import annotations

from datetime import datetime

import optuna
import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.study import studies
from nexus_node.study.proxy import NexusStorageProxy
from tests import netns
from tests.clusters import cluster_until, coordinator, three_voters
from tests.node.helpers import stub, submit, watch_until_end
from tests.node.trial_checks import assert_budget_kept

PORT = 7071
TOKEN = "fencing-cluster-token"
GRACE_S = 1.5
# Elections and the cut-off leader's CheckQuorum step-down take 40-80 ticks of 100 ms, well past
# the 1.5-2.5 s in which it declares the others dead: the cut-off coordinator makes its lost-
# trial writes while it still believes it leads, and they stay pending until the link is back.
ELECTION_TICKS = 40
# Trials long enough to run through the cut, the election and the healing (tens of seconds).
CONSTRAINTS = '{"families": ["mlp"], "min_epochs": 300, "max_epochs": 300}'
BUDGET = 4
pytestmark = pytest.mark.timeout(400)


@pytest.fixture
def bridge():
    with netns.bridged_hosts(3, reach_from_root=True) as b:
        yield b


def running_trial(view: pb.Cluster, node_id: str, job_id: str) -> int | None:
    me = next((n for n in view.nodes if n.node_id == node_id), None)
    numbers = [int(r.rsplit("/", 1)[1]) for r in (me.running if me else [])
               if r.startswith(job_id + "/") and r.rsplit("/", 1)[1].isdigit()]
    return numbers[0] if numbers else None


def test_a_cut_off_coordinator_s_late_decisions_never_commit(bridge, node_factory, tmp_path, insurance_csv):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    seeds = ",".join(f"{h.address}:{PORT}" for h in bridge.hosts)
    flags = ("--slots", "1", "--seeds", seeds, "--no-mdns", "--grace", str(GRACE_S), "--pruner", "none",
             "--election-ticks", str(ELECTION_TICKS), "--token-file", str(token))
    nodes = [node_factory(f"n{i}", *flags, port=PORT, host=h.address, netns=h.ns).start()
             for i, h in enumerate(bridge.hosts)]
    for n in nodes:
        cluster_until(n.address, three_voters, token=TOKEN)
    view = stub(nodes[0].address, TOKEN).GetCluster(pb.GetClusterRequest(), timeout=10)
    old = coordinator(nodes, view)
    others = [n for n in nodes if n is not old]
    ids = {n.address: next(i.node_id for i in view.nodes if i.address == n.address) for n in nodes}
    job_id = submit(stub(others[0].address, TOKEN), insurance_csv, "charges", max_trials=BUDGET, seed=7,
                    constraints_json=CONSTRAINTS).job_id

    # Every slot busy: the cut lands mid-trial everywhere.
    busy = cluster_until(old.address, lambda v: len(v.nodes) == 3 and
                         all(running_trial(v, n.node_id, job_id) is not None for n in v.nodes), token=TOKEN)
    on_others = {running_trial(busy, ids[n.address], job_id) for n in others}
    on_old = running_trial(busy, ids[old.address], job_id)
    cut_at = datetime.now()
    bridge.link(next(h for h in bridge.hosts if h.address == old.host), up=False)

    # The two others elect a new coordinator in a later term; then the link comes back.
    def new_coordinator(v: pb.Cluster) -> bool:
        return v.coordinator_id not in ("", ids[old.address]) and v.term > view.term
    new = cluster_until(others[0].address, new_coordinator, timeout=60, token=TOKEN)
    cluster_until(others[1].address, lambda v: v.coordinator_id == new.coordinator_id, timeout=60, token=TOKEN)
    bridge.link(next(h for h in bridge.hosts if h.address == old.host), up=True)
    cluster_until(old.address, lambda v: v.coordinator_id == new.coordinator_id, timeout=60, token=TOKEN)

    job, _ = watch_until_end(stub(others[0].address, TOKEN), job_id, timeout=300)
    assert job.state == pb.COMPLETED, job.message
    # What the cut-off coordinator decided while it still believed it led: the others dead.
    old_log = old.log.read_text(errors="replace")
    assert any(f"on {ids[n.address]} lost" in old_log for n in others), \
        "the cut-off coordinator never declared the others dead: the test did not exercise its late writes"

    trials = stub(others[0].address, TOKEN).ListTrials(pb.ListTrialsRequest(job_id=job_id), timeout=30).trials
    by_number = {t.number: t for t in trials}
    # Counted once, where they ran: the new coordinator adopted them, and the old one's late
    # "lost" writes for them never took effect.
    assert all(by_number[n].state == "COMPLETE" for n in on_others), \
        [(by_number[n].number, by_number[n].state, by_number[n].message) for n in on_others]
    lost = [t for t in trials if t.state == "FAIL"]
    assert all(t.node_id == ids[old.address] for t in lost), [(t.number, t.node_id, t.message) for t in lost]
    assert {t.number for t in lost} <= {on_old}
    assert_budget_kept(trials, BUDGET)

    # No trial asked for by the old coordinator after the cut: every trial started since was
    # asked for in a later term.
    host, port = others[1].address.rsplit(":", 1)
    study = optuna.load_study(study_name=job.study_name,
                              storage=NexusStorageProxy(host=host, port=int(port), token=TOKEN))
    late = [(t.number, t.user_attrs.get(studies.TERM_ATTR)) for t in study.get_trials(deepcopy=False)
            if t.datetime_start is not None and t.datetime_start >= cut_at
            and not (t.user_attrs.get(studies.TERM_ATTR, 0) > view.term)]
    assert not late, f"trials asked for after the cut, not by a later coordinator: {late}"
    # Every node ends with the same trials.
    for n in nodes:
        assert watch_until_end(stub(n.address, TOKEN), job_id, timeout=60)[0].state == pb.COMPLETED, n.address
        theirs = stub(n.address, TOKEN).ListTrials(pb.ListTrialsRequest(job_id=job_id), timeout=30).trials
        assert list(theirs) == list(trials), n.address
