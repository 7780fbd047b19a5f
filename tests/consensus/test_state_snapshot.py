"""Snapshots of the whole replicated state (issue 23): capture at the applied index, restore on
another node, and every node then goes through the same states, duplicates included."""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import optuna
import pytest

from nexus_node.consensus.state import DEDUPE_ENTRIES, Applied, ReplicatedState
from tests.consensus.machines import History, Machine, as_sent, more, populate, token


def decisions(outcomes: list[Applied]) -> list[tuple]:
    """What every node decides alike about each entry (a handler's result is local: the journal
    answers how many logs it holds, fewer once compacted)."""
    return [(a.index, a.proposal_id, a.duplicate, a.fenced) for a in outcomes]


def test_a_restored_node_holds_the_same_state_and_follows_the_same_entries_alike():
    node = Machine()
    log = History(node)
    populate(log)
    at = node.state.applied_index
    items = as_sent(node.state.capture()())
    # Plain JSON, "state" first, then kinds in registration order; the barrier holds nothing.
    assert items[0] == ("state", {"applied_index": at, "seen": [[e.proposal_id, e.index] for e in log.entries]})
    kinds = [k for k, _ in items[1:]]
    assert kinds == sorted(kinds, key=["records", "tokens", "optuna_journal"].index)
    assert set(kinds) == {"records", "optuna_journal", "tokens"}

    copy = Machine()
    copy.state.restore(at, items)
    assert copy.dump() == node.dump()
    assert copy.recorded == [("n1", "10.0.0.1:7000"), ("n2", "10.0.0.2:7000")]   # the driver's address book

    more(log)
    assert decisions(copy.apply(log.since(at))) == decisions(log.applied[at:])
    assert copy.dump() == node.dump()
    assert copy.dump()["jobs"]["a"]["state"] == "CANCELLED" and "d" in copy.dump()["jobs"]


def test_what_is_applied_after_a_capture_is_not_in_it():
    node = Machine()
    log = History(node)
    populate(log)
    at = node.state.applied_index
    then = node.dump()
    take = node.state.capture()
    # Cancels and blob holders change in place, journals grow, tokens come and go.
    more(log)
    assert node.dump() != then
    copy = Machine()
    copy.state.restore(at, as_sent(take()))
    assert copy.dump() == then

    # A restore puts new journals, and what is applied after it goes to those.
    other = Machine()
    other_log = History(other)
    optuna.create_study(study_name="other", storage=other_log.optuna())
    node.state.restore(other.state.applied_index, as_sent(other.state.capture()()))
    optuna.create_study(study_name="more", storage=other_log.optuna())
    node.apply(other_log.since(node.state.applied_index))
    assert set(node.dump()["studies"]) == {"other", "more"}
    again = Machine()
    again.state.restore(at, as_sent(take()))
    assert again.dump() == then
    assert json.dumps(list(take())) == json.dumps(list(take()))


def test_an_id_is_a_duplicate_within_the_window_identically_on_restored_nodes():
    node = Machine()
    log = History(node)

    def fill(upto: int) -> None:   # entries with ids of their own: the window fills up
        while node.state.applied_index < upto:
            log.commit("barrier", {}, pid=f"filler-{node.state.applied_index + 1}")

    first = log.commit("tokens", token("t1", "1"), pid="retry-me").index
    fill(15_000)
    early = node.restored()   # "retry-me" is 14,999 entries old
    last_dup = first + DEDUPE_ENTRIES - 1
    fill(last_dup - 1)
    retry = log.commit("tokens", token("t2", "2"), pid="retry-me")
    assert retry.index == first and retry.duplicate   # within the window: the first copy's index
    late = node.restored()    # at the last entry that still counts it
    again = log.commit("tokens", token("t3", "3"), pid="retry-me")
    assert (again.index, again.duplicate) == (last_dup + 1, False)   # out of it: it takes effect
    assert node.state.applied_at("retry-me") == again.index

    for other in (early, late):
        since = other.state.applied_index
        assert decisions(other.apply(log.since(since))) == decisions(log.applied[since:])
        assert other.dump() == node.dump()
        assert [t.name for t in other.tokens.list()] == ["t1", "t3"]
        assert other.state.capture()().__next__() == node.state.capture()().__next__()
    # Bounded: only the ids of the window are kept (entry 1's went; the duplicate added none).
    seen = dict(node.state.capture()().__next__()[1]["seen"])
    assert len(seen) == DEDUPE_ENTRIES - 1 and "filler-2" in seen and min(seen.values()) == 2
    assert node.state.applied_at("filler-2") == 2


Items = list[Any]


def _first(kind: str, change: Callable[[Any], Any]) -> Callable[[Items], Items]:
    def bad(items: Items) -> Items:
        at = next(i for i, (k, _) in enumerate(items) if k == kind)
        return [*items[:at], (kind, change(items[at][1])), *items[at + 1:]]
    return bad


def _state(**fields: Any) -> Callable[[Items], Items]:
    return lambda items: [("state", {**items[0][1], **fields}), *items[1:]]


#: The message (part of it) each malformed snapshot gets, and how it is malformed.
MALFORMED: dict[str, Callable[[Items], Items]] = {
    'starts with its ("state"': lambda items: items[1:],
    "taken at index 3": _state(applied_index=3),
    "seen is a list of [proposal id, index] pairs": _state(seen=[["p", -1]]),
    "names a proposal id twice": _state(seen=[["p", 1], ["p", 2]]),
    "kind 'tables', which this node has no state machine for": lambda items: [*items, ("tables", {})],
    'a second "state" item': lambda items: [*items, items[0]],
    "a pair (kind, item)": lambda items: [*items, ["records"]],
    "records: JobRecord.created_at must be a number": _first("records", lambda i: {"job": {**i["job"], "created_at": "yesterday"}}),
    "records: a records item is one of": _first("records", lambda i: {"jobs": i}),
    "records: blob": lambda items: [*items, ("records", {"blob": {"sha256": "ab" * 32, "size": 1, "kind": "x",
                                                                   "holders": [], "job_id": ""}})],
    "records: job 'a' is there twice": lambda items: [*items, items[1]],
    "optuna_journal: a journal's counters are next_study and next_trial, whole numbers": _first(
        "optuna_journal", lambda i: {"name": i["name"], "journal": {"next_study": -1, "next_trial": 0}}),
    'optuna_journal: a journal item holds "journal", "study" or "trials"': _first(
        "optuna_journal", lambda i: {"name": i["name"], "rows": []}),
    # A later kind: the kinds restored before it are put back as they were.
    "tokens: token 'reader' is there twice": lambda items: [*items, next(p for p in items if p[0] == "tokens")],
}


@pytest.mark.parametrize("message", list(MALFORMED))
def test_malformed_items_are_refused_with_what_is_wrong_and_change_nothing(message):
    node = Machine()
    populate(History(node))
    good = as_sent(node.state.capture()())
    target = Machine()
    target_log = History(target)
    target_log.commit("records", {"op": "member", "node_id": "n9", "address": "10.0.0.9:1"})
    optuna.create_study(study_name="mine", storage=target_log.optuna()).optimize(lambda t: t.suggest_int("k", 0, 1), 1)
    while target.state.applied_index < node.state.applied_index - 1:
        target_log.commit("barrier", {})
    target_log.commit("tokens", token("mine", "7"), pid="mine")
    before = target.dump()

    with pytest.raises(ValueError, match=re.escape(message)):
        target.state.restore(node.state.applied_index, MALFORMED[message](good))
    assert target.dump() == before
    # It goes on as before: same applied index, same ids seen.
    assert target_log.commit("tokens", token("mine", "7"), pid="mine").duplicate


def test_a_kind_without_snapshot_functions_holds_no_state_and_both_are_needed():
    state = ReplicatedState()
    state.register("barrier", lambda body, index: None)
    assert [k for k, _ in state.capture()()] == ["state"]
    with pytest.raises(ValueError, match="both capture and restore"):
        state.register("half", lambda body, index: None, capture=lambda: lambda: [])
