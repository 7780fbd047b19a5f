"""nexus-node's consensus timing flags reach the driver's settings, and bad ones are refused."""

from __future__ import annotations

import pytest

from nexus_node.node.main import parse_args


def test_default_timing_suits_a_lan(tmp_path):
    t = parse_args(["--data-dir", str(tmp_path)]).timing
    assert (t.tick_interval, t.heartbeat_tick, t.election_tick) == (0.1, 2, 10)


def test_slow_link_timing_is_set_from_the_flags(tmp_path):
    t = parse_args(["--data-dir", str(tmp_path), "--raft-tick-ms", "500",
                    "--heartbeat-ticks", "3", "--election-ticks", "12"]).timing
    assert (t.tick_interval, t.heartbeat_tick, t.election_tick) == (0.5, 3, 12)


@pytest.mark.parametrize("flags, says", [
    (["--heartbeat-ticks", "0"], "--election-ticks at least three times"),
    (["--election-ticks", "5"], "--election-ticks at least three times"),
    (["--heartbeat-ticks", "4", "--election-ticks", "11"], "--election-ticks at least three times"),
    (["--raft-tick-ms", "5"], "--raft-tick-ms at least 10"),
])
def test_timing_that_would_elect_on_one_late_heartbeat_is_refused(tmp_path, flags, says, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--data-dir", str(tmp_path), *flags])
    assert exc.value.code == 2
    assert says in capsys.readouterr().err.splitlines()[-1]


def test_upload_idle_timeout_is_a_flag_with_a_positive_value(tmp_path):
    assert parse_args(["--data-dir", str(tmp_path)]).upload_idle_s == 30.0
    assert parse_args(["--data-dir", str(tmp_path), "--upload-idle-s", "2.5"]).upload_idle_s == 2.5
    for bad in ("0", "-1", "nan"):
        with pytest.raises(SystemExit):
            parse_args(["--data-dir", str(tmp_path), "--upload-idle-s", bad])
