"""Writes fenced to their proposer's term (issue 22): a coordinator's decisions take effect only
while it leads in the term it names, and are never handed to another node.

The rule itself is pure (``ReplicatedState``); then three real nodes on loopback show that a
fenced write is refused on every path by which a deposed coordinator's write could commit: its
own retry after the leader moved, a leader it hands the write over to, and Optuna's own writes
made in a fenced context (``study.ask()`` deep inside Optuna)."""

from __future__ import annotations

import asyncio
import contextvars
import json
import uuid

import optuna
import pytest

from nexus_node.consensus.raft import Entry, NotLeader
from nexus_node.consensus.state import ReplicatedState, encode_command
from nexus_node.study.journal import fence, fenced_context

from .driver_cluster import MeshCluster


def _state() -> tuple[ReplicatedState, list[tuple[object, int]]]:
    state = ReplicatedState()
    seen: list[tuple[object, int]] = []
    state.register("k", lambda body, index: seen.append((body, index)))
    return state, seen


def test_a_fenced_write_takes_effect_only_in_an_entry_of_its_own_term():
    state, seen = _state()
    ok = state.apply(Entry(1, 4, data=encode_command("k", {"v": 1}, term=4), proposal_id="a"))
    # Appended by the leader of term 5 (the proposer re-elected, or another leader): void.
    late = state.apply(Entry(2, 5, data=encode_command("k", {"v": 2}, term=4), proposal_id="b"))
    plain = state.apply(Entry(3, 5, data=encode_command("k", {"v": 3}), proposal_id="c"))
    assert (ok.fenced, late.fenced, plain.fenced) == (False, True, False)
    assert seen == [({"v": 1}, 1), ({"v": 3}, 3)]
    # The void write is not recorded as done: its proposer must learn it did not happen.
    assert state.applied_at("a") == 1 and state.applied_at("b") is None and state.applied_at("c") == 3
    assert state.applied_index == 3


def test_a_leader_never_takes_a_fenced_write_a_follower_hands_over():
    state, _ = _state()
    assert state.validate(encode_command("k", {}, term=7)) == 7
    assert state.validate(encode_command("k", {})) is None
    state.check_forwarded(encode_command("k", {}), "n2")   # an unfenced write may be handed over
    with pytest.raises(ValueError, match="fenced to term 7 is never handed over"):
        state.check_forwarded(encode_command("k", {}, term=7), "n2")


@pytest.mark.parametrize("term", [0, -1, True, "3", 2.0, None])
def test_a_command_naming_a_term_that_is_not_a_whole_number_from_1_is_refused(term):
    state, _ = _state()
    data = json.dumps({"kind": "k", "body": {}, "term": term}).encode()
    with pytest.raises(ValueError, match="term is a whole number from 1"):
        state.validate(data)


# ---- three real nodes on loopback ------------------------------------------------------------------


@pytest.fixture
async def cluster(tmp_path):
    c = await MeshCluster(tmp_path).start()
    yield c
    await c.stop()


async def test_a_fenced_write_commits_while_its_node_leads_in_that_term_and_never_after(cluster):
    lead = await cluster.leader()
    term = lead.driver.status().term
    await lead.driver.propose(encode_command("record", "decided in term", term=term))
    assert lead.applied == ["decided in term"]

    new = next(n for n in cluster.nodes if n is not lead)
    await lead.driver.transfer_leadership(new.node_id)
    await lead.driver.wait_for(lambda: lead.driver.leader == new.node_id and new.driver.is_leader, 10)
    assert new.driver.status().term > term
    # The deposed leader's late write: refused at once, never handed to the new leader.
    with pytest.raises(NotLeader):
        await lead.driver.propose(encode_command("record", "late", term=term), timeout=5)
    # A follower's write of the new term: refused too (only the leader of a term writes in it).
    with pytest.raises(NotLeader):
        await lead.driver.propose(encode_command("record", "not mine", term=new.driver.status().term), timeout=5)
    # The log goes on; nothing of the refused writes is anywhere.
    await lead.record("after")
    for n in cluster.nodes:
        await n.driver.wait_for(lambda n=n: n.applied[-1:] == ["after"], 10)
        assert n.applied == ["decided in term", "after"]


async def test_a_leader_refuses_a_fenced_write_a_follower_hands_over(cluster):
    lead = await cluster.leader()
    follower = next(n for n in cluster.nodes if n is not lead)
    refused: list[str] = []
    term = lead.driver.status().term
    queued = lead.driver.receive_proposals([(encode_command("record", "forged", term=term), "p-forged", False)],
                                           follower.node_id, refused)
    assert queued == 0 and refused and "never handed over" in refused[0]
    await lead.record("after")
    await lead.driver.wait_for(lambda: lead.applied[-1:] == ["after"], 10)
    assert "forged" not in lead.applied and lead.driver.state.applied_at("p-forged") is None


async def test_optuna_writes_made_in_a_fenced_context_are_refused_once_the_term_is_over(cluster):
    """The coordinator's journal writes happen inside Optuna (``study.ask()``): the term reaches
    them through the context its tasks run in, across ``asyncio.to_thread``."""
    lead = await cluster.leader()
    term = lead.driver.status().term
    storage = lead.journal.storage()
    name = f"fenced-{uuid.uuid4().hex[:6]}"

    async def coordinator_writes() -> None:
        assert fence() == term
        study = await asyncio.to_thread(optuna.create_study, storage=storage, study_name=name)
        await asyncio.to_thread(study.ask)

    await asyncio.create_task(coordinator_writes(), context=fenced_context(term))
    assert fence() is None   # the caller's own context is not fenced
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 1

    new = next(n for n in cluster.nodes if n is not lead)
    await lead.driver.transfer_leadership(new.node_id)
    await lead.driver.wait_for(lambda: lead.driver.leader == new.node_id and new.driver.is_leader, 10)

    async def deposed_asks() -> None:
        study = await asyncio.to_thread(optuna.load_study, study_name=name, storage=storage)
        with pytest.raises(NotLeader):
            await asyncio.to_thread(study.ask)

    await asyncio.create_task(deposed_asks(), context=fenced_context(term))
    # An unfenced write (a user's, a runner's) from the same node still goes through the leader.
    await asyncio.to_thread(optuna.load_study(study_name=name, storage=storage).ask)
    for n in cluster.nodes:
        await n.driver.wait_for(lambda n=n: n.journal.db.applied >= lead.journal.db.applied, 10)
        assert len(optuna.load_study(study_name=name, storage=n.journal.storage()).trials) == 2


def test_fenced_context_leaves_the_current_context_alone():
    ctx = fenced_context(9)
    assert ctx.run(fence) == 9 and fence() is None
    assert contextvars.copy_context().run(fence) is None
