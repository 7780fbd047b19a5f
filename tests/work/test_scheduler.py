"""The coordinator's scheduling decisions, without sockets or clocks (nexus_node/work/scheduler.py)."""

from __future__ import annotations

from nexus_node.work import scheduler as s
from nexus_node.work.scheduler import NodeView, Schedule, TrialRequest

MB = 1 << 20


def req(job: str, n: int, memory: int = 100 * MB, key: str | None = None) -> TrialRequest:
    return TrialRequest(job, n, key or f"cfg-{job}-{n}", memory)


def node(name: str, slots: int = 2, memory: int = 4096 * MB, heartbeat: float = 0.0) -> NodeView:
    return NodeView(name, slots, memory, heartbeat)


def run(schedule: Schedule, placements, term: int = 1, now: float = 0.0) -> list[s.Lease]:
    return [s.grant(schedule, p, f"L{p.request.job_id}-{p.request.trial_number}", term, now) for p in placements]


def test_placement_fills_free_slots_spreading_over_nodes():
    schedule = Schedule()
    placed, refused = s.place(schedule, {"j1": [req("j1", i) for i in range(5)]}, ["j1"],
                              [node("a", 2), node("b", 2)])
    assert not refused
    assert [p.node_id for p in placed] == ["b", "a", "b", "a"]   # most free slots first; ties by name
    run(schedule, placed)
    assert s.place(schedule, {"j1": [req("j1", 4)]}, ["j1"], [node("a", 2), node("b", 2)]) == ([], [])


def test_placement_prefers_the_node_with_memory_for_the_trial_and_refuses_what_fits_nowhere():
    nodes = [node("small", 4, 300 * MB), node("big", 1, 2048 * MB)]
    placed, refused = s.place(Schedule(), {"j": [req("j", 0, memory=1024 * MB)]}, ["j"], nodes)
    assert [p.node_id for p in placed] == ["big"] and not refused
    placed, refused = s.place(Schedule(), {"j": [req("j", 0, memory=4096 * MB)]}, ["j"], nodes)
    assert not placed and "largest node has 2048 MB" in refused[0].reason


def test_memory_already_promised_to_running_trials_counts():
    schedule = Schedule()
    nodes = [node("a", 4, 1000 * MB)]
    run(schedule, s.place(schedule, {"j": [req("j", 0, memory=700 * MB)]}, ["j"], nodes)[0])
    placed, refused = s.place(schedule, {"j": [req("j", 1, memory=700 * MB)]}, ["j"], nodes)
    assert placed == [] and refused == []   # waits: fits the node, not next to the running trial


def test_a_second_small_job_gets_slots_while_a_long_job_has_many_pending():
    schedule = Schedule()
    nodes = [node("a", 2), node("b", 2)]
    run(schedule, s.place(schedule, {"long": [req("long", i) for i in range(50)]}, ["long"], nodes)[0])
    finished = next(iter(schedule.leases))
    assert s.accept_result(schedule, finished, schedule.leases[finished].node_id)
    pending = {"long": [req("long", i) for i in range(4, 50)], "small": [req("small", 0), req("small", 1)]}
    placed, _ = s.place(schedule, pending, ["long", "small"], nodes)
    assert [p.request.job_id for p in placed] == ["small"]   # the one free slot goes to the job with none


def test_cancelling_a_job_frees_its_slots_at_once():
    schedule = Schedule()
    nodes = [node("a", 2)]
    run(schedule, s.place(schedule, {"j": [req("j", 0), req("j", 1)]}, ["j"], nodes)[0])
    gone = s.cancel_job(schedule, "j")
    assert len(gone) == 2 and not schedule.leases
    assert len(s.place(schedule, {"k": [req("k", 0), req("k", 1)]}, ["k"], nodes)[0]) == 2
    assert not s.accept_result(schedule, gone[0].lease_id, "a")   # a late result of the cancelled job


def test_a_node_silent_past_grace_is_dead_and_its_leases_are_revoked():
    schedule = Schedule()
    nodes = [node("a", 1, heartbeat=0.0), node("b", 1, heartbeat=0.0)]
    leases = run(schedule, s.place(schedule, {"j": [req("j", 0), req("j", 1)]}, ["j"], nodes)[0])
    on_a = next(lease for lease in leases if lease.node_id == "a")
    nodes = [node("a", 1, heartbeat=0.0), node("b", 1, heartbeat=9.0)]
    assert s.declare_dead(schedule, nodes, now=4.9, grace=5.0) == []
    out = s.declare_dead(schedule, nodes, now=5.5, grace=5.0)
    assert [r.lease for r in out] == [on_a] and "missed heartbeats for 5.5 s" in out[0].reason
    # The dead node's late result is refused, and its task's re-run (work.retries decides it)
    # never goes to it: it waits for b, whose one slot is busy, and takes that slot when b's
    # trial ends.
    rerun = req("j", 2, key=on_a.request.config_key)
    assert not s.accept_result(schedule, on_a.lease_id, "a")
    assert s.place(schedule, {"j": [rerun]}, ["j"], nodes) == ([], [])
    on_b = next(lease for lease in leases if lease.node_id == "b")
    assert s.accept_result(schedule, on_b.lease_id, "b")
    assert [p.node_id for p in s.place(schedule, {"j": [rerun]}, ["j"], nodes)[0]] == ["b"]


def test_results_only_count_from_the_lease_holder_and_stale_terms_are_refused():
    schedule = Schedule()
    lease = s.grant(schedule, s.Placement(req("j", 0), "a"), "L1", term=3, now=0.0)
    assert not s.accept_result(schedule, "L1", "b")       # not the holder
    assert not s.accept_result(schedule, "nope", "a")     # unknown lease
    assert s.accept_result(schedule, "L1", "a")
    assert not s.accept_result(schedule, "L1", "a")       # counted once
    assert s.accept_assignment(newest_term_seen=3, assignment_term=lease.term)
    assert not s.accept_assignment(newest_term_seen=4, assignment_term=3)


def test_a_revived_node_gets_new_work_but_never_its_old_leases():
    schedule = Schedule()
    s.grant(schedule, s.Placement(req("j", 0), "a"), "L1", 1, 0.0)
    s.declare_dead(schedule, [node("a", heartbeat=0.0)], 10.0, 5.0)
    s.revive(schedule, "a")
    assert not s.accept_result(schedule, "L1", "a")
    assert len(s.place(schedule, {"j": [req("j", 1)]}, ["j"], [node("a", heartbeat=10.0)])[0]) == 1


def test_the_search_space_is_bounded_by_the_smallest_per_trial_budget_of_the_live_workers():
    """Issue 24: the bounds use each worker's reported memory, not the coordinator's."""
    from types import SimpleNamespace

    from nexus_node.jobs.context import JobContext, ManagerSettings
    from nexus_node.work.scheduler import smallest_trial_budget

    big, small = NodeView("big", 4, 4 << 30, 0.0), NodeView("small", 2, 600 << 20, 0.0)
    assert smallest_trial_budget([big, small]) == 300 << 20
    assert smallest_trial_budget([NodeView("starting", 0, 0, 0.0)]) is None
    ctx = JobContext.__new__(JobContext)
    ctx.settings = ManagerSettings(worker_memory_bytes=16 << 30)
    ctx.dispatcher = None   # not coordinating, or no worker heard yet: this node's own memory
    assert ctx.worker_memory() == 16 << 30
    ctx.dispatcher = SimpleNamespace(nodes=lambda: [big, small])   # type: ignore[assignment]
    assert ctx.worker_memory() == 4 * (300 << 20)   # hard_bounds gives a trial a quarter of it
