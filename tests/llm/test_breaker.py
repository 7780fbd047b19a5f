"""The circuit breaker alone: pure, with made-up times."""

from nexus_node.llm.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


def test_opens_after_consecutive_failures_and_refuses_until_the_cooldown():
    b = CircuitBreaker(failures=3, cooldown_s=60)
    for t in (0.0, 1.0):
        assert b.allow(t)
        b.record_failure(t)
    assert b.state == CLOSED
    assert b.allow(2.0)
    b.record_failure(2.0)
    assert b.state == OPEN
    assert not b.allow(2.5) and not b.allow(61.9)
    assert b.retry_in(32.0) == 30.0


def test_a_success_resets_the_count():
    b = CircuitBreaker(failures=2, cooldown_s=60)
    b.record_failure(0.0)
    b.record_success(1.0)
    b.record_failure(2.0)
    assert b.state == CLOSED and b.allow(3.0)


def test_half_open_lets_one_probe_through_and_its_outcome_decides():
    b = CircuitBreaker(failures=1, cooldown_s=10)
    b.record_failure(0.0)
    assert b.allow(10.0) and b.state == HALF_OPEN
    assert not b.allow(10.1)          # one probe at a time
    b.record_failure(10.5)            # the probe failed: open for another cooldown
    assert b.state == OPEN and not b.allow(20.0) and b.allow(20.5)
    b.record_success(21.0)
    assert b.state == CLOSED and b.allow(21.0) and b.allow(21.0)


def test_an_abandoned_probe_frees_the_slot():
    b = CircuitBreaker(failures=1, cooldown_s=10)
    b.record_failure(0.0)
    assert b.allow(10.0)
    b.record_abandoned()
    assert b.allow(10.0) and b.state == HALF_OPEN
