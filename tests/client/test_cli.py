"""The `nexus` command line in-process against the scripted fake node: argument parsing,
stdout/stderr contract, exit statuses."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys

import pytest

from nexus_client import cli
from nexus_client.client import PredictedRow, PredictResult
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from tests.client.fake_node import ARTIFACT, PEOPLE_ROWS, FakeNode, finished_job


@pytest.fixture
def run(fake_node: FakeNode, capsys):
    """Run `nexus --connect FAKE ARGS...`; returns (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--connect", fake_node.address, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


# -- parsing ------------------------------------------------------------------------------


def test_submit_arguments():
    args = cli.build_parser().parse_args([
        "--connect", "h:1", "--token-file", "/t", "submit", "x.csv", "--target", "y", "--use-case", "u",
        "--trials", "5", "--time-budget", "9.5", "--metric", "rmse", "--seed", "7",
        "--constraints", "{}", "--drop", "a,b", "--wait", "--json",
    ])
    assert (args.connect, args.token_file, args.file, args.target, args.use_case) == ("h:1", "/t", "x.csv", "y", "u")
    assert (args.trials, args.time_budget, args.metric, args.seed, args.drop) == (5, 9.5, "rmse", 7, "a,b")
    assert args.wait and args.json and args.func is cli.cmd_submit


def test_global_options_also_work_after_the_command():
    parser = cli.build_parser()
    assert parser.parse_args(["jobs", "--connect", "h:2"]).connect == "h:2"
    assert parser.parse_args(["--connect", "h:1", "jobs"]).connect == "h:1"
    assert parser.parse_args(["jobs"]).connect is None


def test_demo_defaults():
    args = cli.build_parser().parse_args(["demo"])
    assert (args.trials, args.time_budget, args.seed, args.data_dir, args.keep) == (40, 100.0, 1, None, False)


@pytest.mark.parametrize("argv", [[], ["submit", "x.csv"], ["frobnicate"], ["submit", "x.csv", "--target", "y", "--trials", "many"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "usage: nexus" in capsys.readouterr().err


def test_constraints_inline_or_from_a_file(tmp_path):
    assert cli.parse_constraints(' {"max_layers": 2}') == {"max_layers": 2}
    path = tmp_path / "c.json"
    path.write_text('{"widths": [32]}')
    assert cli.parse_constraints(str(path)) == {"widths": [32]}
    assert cli.parse_constraints(None) is None
    for bad, message in [
        ("{nope", "not valid JSON"),
        (str(tmp_path / "missing.json"), "readable file"),
        ('{"max_layerz": 2}', "unknown constraint keys"),
        ('{"max_layers": 0}', "positive integer"),
    ]:
        with pytest.raises(cli.UsageError, match=message):
            cli.parse_constraints(bad)
    path.write_text("[1, 2]")
    with pytest.raises(cli.UsageError, match="JSON object"):
        cli.parse_constraints(str(path))


# -- submit -------------------------------------------------------------------------------


def test_submit_prints_the_job_id_and_sends_the_options(run, fake_node, csv_file):
    code, out, err = run("submit", str(csv_file), "--target", "charges", "--trials", "3",
                         "--drop", "sex, smoker", "--constraints", '{"max_layers": 1}')
    assert (code, out, err) == (0, "j1\n", "")
    spec = fake_node.service.received.specs[0]
    assert list(spec.drop_columns) == ["sex", "smoker"] and spec.max_trials == 3
    assert json.loads(spec.constraints_json) == {"max_layers": 1}


def test_submit_json_prints_one_object(run, csv_file):
    code, out, _ = run("submit", str(csv_file), "--target", "charges", "--json")
    assert code == 0 and out.count("\n") == 1
    assert json.loads(out)["state"] == "PENDING"


def test_submit_wait_json_prints_the_final_job_and_progress_on_stderr(run, csv_file):
    code, out, err = run("submit", str(csv_file), "--target", "charges", "--wait", "--json")
    assert code == 0
    job = json.loads(out)
    assert job["state"] == "COMPLETED" and job["test_metrics"]["r2"] == 0.86
    assert {"job_id", "trials", "model_id", "feature_importance"} <= job.keys()
    assert "PENDING" in err and "SEARCHING" in err and "COMPLETED" in err


def test_submit_wait_of_a_failed_job_exits_1(run, fake_node, csv_file):
    fake_node.service.outcome = pb.FAILED
    code, out, err = run("submit", str(csv_file), "--target", "charges", "--wait")
    assert code == 1 and out == "j1\n"
    assert "FAILED: every trial failed: out of memory" in err


def test_submit_refused_by_the_node_exits_2_naming_the_column(run, csv_file):
    code, out, err = run("submit", str(csv_file), "--target", "price")
    assert code == 2 and out == ""
    assert err.startswith("error: INVALID_ARGUMENT: target column 'price'")


def test_submit_with_bad_constraints_exits_2_before_uploading(run, fake_node, csv_file):
    code, _, err = run("submit", str(csv_file), "--target", "charges", "--constraints", '{"layers": 2}')
    assert code == 2 and "unknown constraint keys ['layers']" in err
    assert fake_node.service.received.specs == []


def test_submit_of_a_missing_file_exits_2(run, fake_node, tmp_path):
    code, _, err = run("submit", str(tmp_path / "nope.csv"), "--target", "y")
    assert code == 2 and "no such file" in err
    assert fake_node.service.received.specs == []


def test_an_unreadable_token_file_exits_2(run, csv_file, tmp_path):
    code, _, err = run("--token-file", str(tmp_path / "absent"), "jobs")
    assert code == 2 and "cannot read the token" in err


def test_an_unreachable_node_exits_3_with_a_hint(capsys, clean_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
        code = cli.main(["--connect", address, "jobs"])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("error: UNAVAILABLE") and f"is a node running at {address}?" in err


@pytest.mark.parametrize("address, says", [
    ("127.0.0.1", "has no port"), ("127.0.0.1:99999", "from 1 to 65535"), ("::1:7070", "has no port"),
    ("host:x", "from 1 to 65535"),
])
def test_an_address_grpc_would_dial_wrongly_exits_2_saying_what_to_write(capsys, clean_env, address, says):
    assert cli.main(["--connect", address, "jobs"]) == 2
    err = capsys.readouterr().err
    assert says in err and "HOST:PORT" in err or "65535" in err


def test_an_explicit_token_file_outranks_nexus_token(monkeypatch, tmp_path):
    from nexus_node.net import auth

    path = tmp_path / "token"
    path.write_text("from-the-file\n")
    monkeypatch.setenv("NEXUS_TOKEN", "from-the-environment")
    assert auth.client_token(None, str(path)) == "from-the-file"
    assert auth.client_token(None, None) == "from-the-environment"
    assert auth.client_token("given", str(path)) == "given"


# -- reading jobs, models, cluster -------------------------------------------------------


@pytest.fixture
def finished(fake_node: FakeNode) -> pb.Job:
    job = finished_job("j9", pb.JobSpec(target="charges", filename="insurance.csv", max_trials=24,
                                        use_case="price insurance", time_budget_seconds=100))
    job.evaluated_model_rows, job.test_rows, job.final_model_rows = 1070, 268, 1338
    fake_node.service.add_job(job)
    return job


def test_jobs_table_and_json(run, finished):
    code, out, _ = run("jobs")
    header, row = out.splitlines()
    assert header.split() == ["JOB", "STATE", "TRIALS", "BEST", "CREATED"]
    assert row.split()[:5] == ["j9", "COMPLETED", "3/24", "r2", "0.8512"]
    code, out, _ = run("jobs", "--json")
    assert code == 0 and [j["job_id"] for j in json.loads(out)] == ["j9"]


def test_trials_lost_with_their_node_show_apart_from_the_budget(run, fake_node):
    job = finished_job("j7", pb.JobSpec(target="y", max_trials=3))
    job.trials.complete, job.trials.pruned, job.trials.fail, job.trials.lost = 3, 0, 1, 1   # one lost, run again
    fake_node.service.add_job(job)
    code, out, _ = run("jobs")
    (row,) = [r for r in out.splitlines() if r.startswith("j7")]
    assert "3/3 (1 re-run)" in row
    code, out, _ = run("show", "j7")
    assert "(1 lost with their node and re-run, not counted)" in out
    code, out, _ = run("jobs", "--json")
    assert json.loads(out)[0]["trials"]["LOST"] == 1


def test_show_human(run, finished):
    code, out, _ = run("show", "j9")
    assert code == 0
    assert "j9  COMPLETED" in out
    assert "insurance.csv -> charges (REGRESSION)" in out
    assert "2 complete, 1 pruned, 0 failed" in out and "budget 24 trials / 1:40" in out
    assert "best         r2 0.8512  (maximize" in out
    assert "test         mae 2500  r2 0.86  rmse 4500" in out
    assert ("on 268 held-out rows, by a fit on 1,070 rows; the served model was refitted on 1,338 rows"
            in " ".join(out.split()))
    assert "constraints  heuristic: 1338 rows: small network" in out
    assert "Smoking status drives premiums" in out
    features = out.split("top features\n")[1].split("\n\n")[0].splitlines()
    assert [f.split()[0] for f in features] == ["smoker", "age", "region"]


def test_show_unknown_job_exits_2_not_found(run):
    code, out, err = run("show", "nope")
    assert (code, out) == (2, "") and err == "error: NOT_FOUND: no job 'nope'\n"


def test_show_json_is_job_to_dict(run, finished):
    _, out, _ = run("show", "j9", "--json")
    assert json.loads(out)["constraints"]["max_layers"] == 3


def test_watch_ends_with_the_show_output(run, finished):
    code, out, err = run("watch", "j9")
    assert code == 0 and "j9  COMPLETED" in out and "COMPLETED" in err


def test_cancel(run, fake_node, finished):
    assert run("cancel", "j9")[:2] == (0, "j9 CANCELLED\n")
    assert fake_node.service.received.cancelled == ["j9"]


def test_trials(run, finished):
    code, out, _ = run("trials", "j9")
    lines = out.splitlines()
    assert code == 0 and lines[1].split()[:3] == ["0", "COMPLETE", "0.8"] and "out of memory" in lines[2]
    assert [t["value"] for t in json.loads(run("trials", "j9", "--json")[1])] == [0.8, None]


def test_models(run, finished):
    code, out, _ = run("models")
    assert code == 0 and out.splitlines()[1].split()[:5] == ["m-j9", "j9", "REGRESSION", "charges", "r2"]
    assert json.loads(run("models", "--json")[1])[0]["input_columns"] == ["age", "smoker"]


def test_cluster(run):
    code, out, _ = run("cluster")
    assert code == 0 and "cluster lab  coordinator n1  term 3" in out
    cells = out.splitlines()[2].split()
    assert cells[:3] == ["n1", "127.0.0.1:7070", "coordinator"] and "1/2" in cells
    assert json.loads(run("cluster", "--json")[1])["nodes"][0]["memory_free_bytes"] == 3 << 30


# -- predict and export -------------------------------------------------------------------


def test_predict_to_stdout_and_to_a_file(run, finished, csv_file, tmp_path):
    code, out, _ = run("predict", "j9", str(csv_file))
    assert code == 0 and out.splitlines() == ["prediction"] + [str((20 + i) * 100) for i in range(PEOPLE_ROWS)]
    target = tmp_path / "out.csv"
    code, out, err = run("predict", "m-j9", str(csv_file), "-o", str(target))
    assert (code, out, err) == (0, "", f"wrote {PEOPLE_ROWS} predictions to {target}\n")
    assert target.read_text().splitlines()[0] == "prediction"


def test_predict_unknown_model_exits_2(run, csv_file):
    code, _, err = run("predict", "nope", str(csv_file))
    assert code == 2 and "NOT_FOUND" in err


def test_export_prints_a_sha256sum_line(run, finished, tmp_path):
    target = tmp_path / "m.nexus"
    code, out, _ = run("export", "j9", "-o", str(target))
    assert code == 0 and out == f"{hashlib.sha256(ARTIFACT).hexdigest()}  {target}\n"


def test_export_that_does_not_verify_exits_1(run, fake_node, finished, tmp_path):
    fake_node.service.corrupt_export = True
    code, _, err = run("export", "j9", "-o", str(tmp_path / "m.nexus"))
    assert code == 1 and "artifact mismatch" in err and not (tmp_path / "m.nexus").exists()


# -- pieces of the demo -------------------------------------------------------------------


def test_csv_head_reads_the_first_rows_and_re_encodes_them(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('name,charges\n"Smith, J",10\nLee,20\nKim,30\n')
    header, rows, data = cli.csv_head(path, 2)
    assert header == ["name", "charges"] and rows == [["Smith, J", "10"], ["Lee", "20"]]
    assert data == b'name,charges\n"Smith, J",10\nLee,20\n'


def test_demo_predictions_sit_next_to_the_truth():
    result = PredictResult(rows=[PredictedRow("1100", 1100.0, ()), PredictedRow("1800", 1800.0, ())])
    text = cli.format_demo_predictions(["age", "charges"], [["19", "1000"], ["30", "2000"]], result)
    assert text.splitlines() == [
        "age  TRUE charges  PREDICTED  ERROR",
        "19   1,000         1,100      +10%",
        "30   2,000         1,800      -10%",
    ]


def test_format_features_scales_bars_to_the_largest():
    text = cli.format_features([("smoker", 0.6), ("age", 0.3), ("noise", -0.1)], unicode=False, width=10)
    assert text.splitlines() == [
        "  smoker  ##########  0.6",
        "  age     #####-----  0.3",
        "  noise   ----------  -0.1",
    ]


def test_the_module_runs_as_a_script(clean_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
        proc = subprocess.run([sys.executable, "-m", "nexus_client.cli", "--connect", address, "show", "x"],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "UNAVAILABLE" in proc.stderr


def test_the_cli_imports_no_heavy_library():
    # The client process must stay light and start fast: torch, pandas, scikit-learn and
    # numpy load only in runners, optuna only for optuna_storage().
    code = (
        "import sys, nexus_client.cli; "
        "print(sorted(m for m in ('torch', 'pandas', 'sklearn', 'numpy', 'optuna') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"


def test_cluster_lists_discovered_peers_apart_from_members():
    view = pb.Cluster(cluster_name="lab", coordinator_id="n1", nodes=[pb.NodeInfo(node_id="n1")],
                      discovered=[pb.DiscoveredPeer(node_id="n2", address="10.0.0.2:7070", source="mdns"),
                                  pb.DiscoveredPeer(address="10.0.0.3:7070", source="seed")])
    text = cli.format_cluster(view)
    members, _, found = text.partition("discovered, not members")
    assert "n2" not in members and "n2" in found and "(seed)" in found and "10.0.0.3:7070" in found
    assert "discovered" not in cli.format_cluster(pb.Cluster(nodes=[pb.NodeInfo(node_id="n1")]))


def test_an_ensemble_lists_its_members_with_their_nodes_aligned_with_the_other_fields():
    job = pb.Job(job_id="j", state=pb.COMPLETED, model_id="m", spec=pb.JobSpec(target="y", max_trials=3))
    for i in range(5):
        job.members.add(trial=i, family="gbt", weight=0.2, node_id=f"node-{i:08d}")
    lines = [line for line in cli.format_job(job).splitlines() if "#" in line]
    assert lines[0].startswith("ensemble     #0 gbt 20% (node-00000000)  #1 gbt 20%")
    assert len(lines) == 2 and lines[1].startswith(" " * 13 + "#3 gbt 20% (node-00000003)")
    assert all(len(line) <= 99 for line in lines)
