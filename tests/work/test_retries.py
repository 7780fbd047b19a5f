"""The retry rule for lost tasks, as a pure function (nexus_node.work.retries)."""

from __future__ import annotations

from nexus_node.work.retries import Loss, decide_retry, handed_back_message, is_handed_back


def test_a_lost_configuration_runs_again_up_to_max_retries_times():
    earlier: list[Loss] = []
    decisions = []
    for _ in range(3):
        loss = Loss("cfg")
        decisions.append(decide_retry(loss, earlier, max_retries=2))
        earlier.append(loss)
    assert [d.retry for d in decisions] == [True, True, False]
    assert [d.counted for d in decisions] == [1, 2, 3]
    assert "lost 3 times, more than --max-retries 2" in decisions[2].reason


def test_losses_of_other_configurations_do_not_count():
    earlier = [Loss("other"), Loss("other"), Loss("other")]
    assert decide_retry(Loss("cfg"), earlier, max_retries=1).retry


def test_a_handed_back_task_runs_again_and_is_not_counted():
    earlier = [Loss("cfg", handed_back=True)] * 5
    assert decide_retry(Loss("cfg"), earlier, max_retries=1).counted == 1
    # Even past its retries: leaving is the node's doing, not the configuration's.
    spent = [Loss("cfg"), Loss("cfg")]
    d = decide_retry(Loss("cfg", handed_back=True), spent, max_retries=1)
    assert d.retry and d.counted == 2


def test_zero_retries_means_a_loss_is_final():
    assert not decide_retry(Loss("cfg"), [], max_retries=0).retry
    assert decide_retry(Loss("cfg", handed_back=True), [], max_retries=0).retry


def test_a_hand_back_is_recognised_by_its_recorded_reason():
    assert is_handed_back(handed_back_message("n7"))
    assert not is_handed_back("node n7 missed heartbeats for 6.0 s (grace 5 s)")
