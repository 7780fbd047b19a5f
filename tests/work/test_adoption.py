"""Which running trials a new coordinator adopts (work/adoption.py): a pure function of the
claims in live nodes' heartbeats, the study's record, and the clock."""

from __future__ import annotations

from nexus_node.work.adoption import Claim, StudyTrial, adoption

GRACE = 5.0


def study(*trials: tuple[int, bool, str]) -> dict[int, StudyTrial]:
    return {n: StudyTrial(n, running, node) for n, running, node in trials}


def test_trials_still_running_on_the_nodes_they_were_handed_to_are_adopted():
    trials = study((0, True, "a"), (1, True, "b"), (2, False, "a"), (3, True, "dead"))
    claims = [Claim("a", "L0", 0, 10.0), Claim("b", "L1", 1, 10.5)]
    out = adoption(claims, trials, now=11.0, grace=GRACE)
    assert out.adopt == {0: claims[0], 1: claims[1]} and out.refuse == []
    # Trial 3's node is dead: nobody claims it, so it is not adopted (it is failed and re-run).
    assert 3 not in out.adopt


def test_a_claim_on_a_finished_or_unknown_trial_is_refused():
    trials = study((2, False, "a"))
    finished, unknown = Claim("a", "L2", 2, 10.0), Claim("a", "L9", 9, 10.0)
    out = adoption([finished, unknown], trials, now=10.0, grace=GRACE)
    assert out.adopt == {}
    assert out.refuse == [(finished, "trial 2 already finished in the study"),
                          (unknown, "trial 9 is not in the job's study")]


def test_a_node_cannot_take_over_another_node_s_trial_by_naming_it():
    trials = study((0, True, "a"))
    real, fake = Claim("a", "L0", 0, 10.0), Claim("x", "Lx", 0, 10.0)
    out = adoption([fake, real], trials, now=10.0, grace=GRACE)
    assert out.adopt == {0: real}
    assert out.refuse == [(fake, "trial 0 was handed to node a, not to node x")]
    # Alone, the false claim is refused all the same, and the trial is left to be re-run.
    alone = adoption([fake], trials, now=10.0, grace=GRACE)
    assert alone.adopt == {} and [c for c, _ in alone.refuse] == [fake]


def test_a_trial_claimed_twice_by_its_node_is_adopted_once():
    trials = study((0, True, "a"))
    first, second = Claim("a", "L0", 0, 10.0), Claim("a", "L1", 0, 10.0)
    out = adoption([second, first], trials, now=10.0, grace=GRACE)
    assert out.adopt == {0: first}
    assert out.refuse == [(second, "trial 0 is run under lease L0 already")]


def test_a_claim_from_a_node_silent_past_grace_is_neither_adopted_nor_refused():
    trials = study((0, True, "a"))
    out = adoption([Claim("a", "L0", 0, 1.0)], trials, now=1.0 + GRACE + 0.1, grace=GRACE)
    assert out.adopt == {} and out.refuse == []
