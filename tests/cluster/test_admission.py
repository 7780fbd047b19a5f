"""Forming and shaping a cluster: the pure decisions (no sockets)."""

from __future__ import annotations

import math

import pytest

from nexus_node.cluster import admission
from nexus_node.cluster.admission import (
    Formation,
    HelloAnswer,
    MemberHealth,
    desired_voters,
    formation_step,
    next_change,
)
from nexus_node.consensus.raft import Membership

OK = MemberHealth(0.5, True)


def test_a_node_with_no_peers_to_ask_founds_at_once():
    assert formation_step("b", [], 0.0, 2.0, peers_configured=False) == (Formation.FOUND, "")


def test_with_peers_configured_a_node_listens_for_the_window_before_founding():
    assert formation_step("b", [], 0.5, 2.0, peers_configured=True) == (Formation.WAIT, "")
    assert formation_step("b", [], 2.0, 2.0, peers_configured=True) == (Formation.FOUND, "")


def test_the_smallest_id_founds_and_the_others_wait_for_it():
    answers = [HelloAnswer("a", "h:1", member=False), HelloAnswer("c", "h:3", member=False)]
    assert formation_step("b", answers, 60.0, 2.0, True) == (Formation.WAIT, "")
    assert formation_step("a", [HelloAnswer("b", "h:2", False)], 2.0, 2.0, True) == (Formation.FOUND, "")


def test_a_member_means_join_through_the_leader_it_names():
    answers = [HelloAnswer("a", "h:1", member=False),
               HelloAnswer("c", "h:3", member=True, leader_id="d", leader_address="h:4")]
    assert formation_step("b", answers, 0.0, 2.0, True) == (Formation.JOIN, "h:4")
    assert formation_step("b", [HelloAnswer("c", "h:3", True)], 0.0, 2.0, True) == (Formation.JOIN, "h:3")


def test_voter_counts_are_odd_and_capped():
    assert [desired_voters(n, 3) for n in range(1, 7)] == [1, 1, 3, 3, 3, 3]
    assert [desired_voters(n, 7) for n in (5, 6, 7, 9)] == [5, 5, 7, 7]
    assert desired_voters(0, 3) == 1


def test_a_second_node_stays_a_non_voter_and_a_third_brings_two_promotions():
    two = Membership.of(["a"], ["b"])
    assert next_change(two, "a", {"a": OK, "b": OK}, 3, 30.0) is None
    three = Membership.of(["a"], ["b", "c"])
    health = {"a": OK, "b": OK, "c": OK}
    step = next_change(three, "a", health, 3, 30.0)
    assert step == Membership.of(["a", "b"], ["c"])
    assert next_change(step, "a", health, 3, 30.0) == Membership.of(["a", "b", "c"])
    assert next_change(Membership.of(["a", "b", "c"]), "a", health, 3, 30.0) is None


def test_a_learner_that_lags_is_not_promoted():
    m = Membership.of(["a"], ["b", "c"])
    health = {"a": OK, "b": MemberHealth(0.1, caught_up=False), "c": OK}
    assert next_change(m, "a", health, 3, 30.0) == Membership.of(["a", "c"], ["b"])


def test_a_silent_voter_is_demoted_only_when_a_healthy_non_voter_can_replace_it():
    m = Membership.of(["a", "b", "c"])
    silent = {"a": OK, "b": MemberHealth(45.0, True), "c": OK}
    assert next_change(m, "a", silent, 3, 30.0) is None        # nobody to replace it with
    m4 = Membership.of(["a", "b", "c"], ["d"])
    step = next_change(m4, "a", {**silent, "d": OK}, 3, 30.0)
    assert step == Membership.of(["a", "c"], ["b", "d"])
    assert next_change(step, "a", {**silent, "d": OK}, 3, 30.0) == Membership.of(["a", "c", "d"], ["b"])


def test_members_never_heard_from_count_as_silent_and_the_leader_never_is():
    m = Membership.of(["a", "b", "c"], ["d"])
    step = next_change(m, "a", {"d": OK, "c": MemberHealth(math.inf, True)}, 3, 30.0)
    assert step is not None and "a" in step.voters and len(step.voters) == 2


def test_a_member_that_never_answered_this_leader_is_not_caught_up_even_on_a_short_log():
    # Forced recovery or a new leader: the dead learner's silence counts from the takeover,
    # but without an acknowledgement it is no candidate, so it is never promoted into a quorum.
    dead = admission.member_health(now=101.0, heard=None, leader_since=100.0, match=0, commit=12)
    assert dead.silent_for == 1.0 and not dead.caught_up
    alive = admission.member_health(now=101.0, heard=100.9, leader_since=100.0, match=12, commit=12)
    assert alive.caught_up and alive.silent_for == pytest.approx(0.1)
    behind = admission.member_health(now=101.0, heard=100.9, leader_since=100.0, match=10,
                                     commit=11 + admission.CAUGHT_UP_SLACK)
    assert not behind.caught_up
    never = admission.member_health(now=5.0, heard=None, leader_since=0.0, match=0, commit=0)
    assert never.silent_for == float("inf")
    m = Membership.of(["c"], ["a", "d"])
    health = {"a": dead, "d": alive}
    assert admission.next_change(m, "c", health, target_voters=3, voter_timeout=30) == Membership.of(["c", "d"], ["a"])
    assert admission.next_change(m, "c", {"a": dead}, target_voters=3, voter_timeout=30) is None


def test_a_node_rejoins_only_a_cluster_that_went_on_without_it():
    forced = HelloAnswer("c", "10.0.0.3:7070", True, "c", "10.0.0.3:7070", frozenset({"c"}))
    listed = HelloAnswer("b", "10.0.0.2:7070", True, "a", "10.0.0.1:7070", frozenset({"a", "b", "d"}))
    leaderless = HelloAnswer("c", "10.0.0.3:7070", True, "", "", frozenset({"c"}))
    newcomer = HelloAnswer("f", "10.0.0.6:7070", False)
    mine = frozenset({"a", "b", "c", "d"})     # the configuration in d's log
    assert admission.rejoin_target("d", mine, [listed]) == ""            # still a member: wait
    assert admission.rejoin_target("d", mine, [leaderless, newcomer]) == ""
    assert admission.rejoin_target("d", mine, [newcomer, forced]) == "10.0.0.3:7070"
    # Another cluster with the same name and token, none of whose members d knows: not d's.
    stranger = HelloAnswer("x", "10.0.0.9:7070", True, "x", "10.0.0.9:7070", frozenset({"x", "y"}))
    assert admission.rejoin_target("d", mine, [stranger]) == ""


def test_a_non_voter_silent_past_remove_after_is_removed_one_at_a_time():
    m = Membership.of(["a", "b", "c"], ["d", "e"])
    health = {"a": OK, "b": OK, "c": OK, "d": MemberHealth(601.0, False), "e": MemberHealth(900.0, False)}
    assert next_change(m, "a", health, 3, 30.0) is None                     # never, by default
    step = next_change(m, "a", health, 3, 30.0, remove_after=600.0)
    assert step == Membership.of(["a", "b", "c"], ["e"])
    assert next_change(step, "a", health, 3, 30.0, remove_after=600.0) == Membership.of(["a", "b", "c"])
    # A silent voter is never removed as such: it is demoted first, when it can be replaced.
    silent_voter = {**health, "c": MemberHealth(900.0, True)}
    assert next_change(Membership.of(["a", "b", "c"]), "a", silent_voter, 3, 30.0, remove_after=600.0) is None
    # Replacing a silent voter comes before removal: it is demoted, then d promoted.
    ready = {**health, "d": OK, "c": MemberHealth(900.0, True)}
    step = next_change(m, "a", ready, 3, 30.0, remove_after=600.0)
    assert step == Membership.of(["a", "b"], ["c", "d", "e"])
    assert next_change(step, "a", ready, 3, 30.0, remove_after=600.0) == Membership.of(["a", "b", "d"], ["c", "e"])
