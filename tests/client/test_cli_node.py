"""The `nexus` command line as a user runs it: a subprocess against a real node on loopback
(``node_address`` and ``insurance_csv`` come from tests/conftest.py)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from nexus_client.client import NexusClient
from tests.node.helpers import nexus

# A narrow space keeps three trials short; the pipeline still runs every stage.
FAST = '{"max_epochs": 15, "min_epochs": 5, "max_layers": 2, "widths": [32, 64]}'
INSURANCE_COLUMNS = {"age", "sex", "bmi", "children", "smoker", "region"}


@pytest.fixture(scope="module")
def finished(node_address: str, insurance_csv: Path) -> dict:
    """One job run to the end through `nexus submit --wait --json`, shared by the module."""
    proc = nexus(
        node_address, "submit", str(insurance_csv), "--target", "charges", "--trials", "3",
        "--use-case", "price health insurance", "--constraints", FAST, "--wait", "--json",
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout[:2000]
    return json.loads(proc.stdout)


def test_submit_wait_json_reports_the_finished_job(finished):
    assert finished["state"] == "COMPLETED"
    assert {"job_id", "state", "trials", "model_id", "test_metrics", "feature_importance"} <= finished.keys()
    assert "r2" in finished["test_metrics"] and finished["model_id"]
    trials = finished["trials"]
    assert trials["COMPLETE"] >= 1 and trials["COMPLETE"] + trials["PRUNED"] + trials["FAIL"] <= 3
    assert set(finished["feature_importance"]) <= INSURANCE_COLUMNS and finished["feature_importance"]
    assert finished["constraints_source"] == "user"


def test_the_model_says_which_trials_it_averages_and_why(node_address, finished):
    members = finished["members"]
    assert members and sum(m["weight"] for m in members) == pytest.approx(1.0)
    assert all(m["family"] in ("mlp", "gbt") and m["params"] and m["epochs_trained"] >= 1 for m in members)
    assert finished["model_selection"]
    if len(members) == 1:   # the single model is the best trial's, unless the robust check says why not
        assert members[0]["params"] == finished["best_params"] or "serves instead" in finished["model_selection"]
    node_id = json.loads(nexus(node_address, "cluster", "--json").stdout)["nodes"][0]["node_id"]
    assert all(m["node_id"] == node_id for m in members)   # the one node refitted every member
    model = json.loads(nexus(node_address, "models", "--json").stdout)
    (ours,) = [m for m in model if m["model_id"] == finished["model_id"]]
    assert ours["members"] == members and ours["selection"] == finished["model_selection"]
    assert ours["family"] == ("ensemble" if len(members) > 1 else members[0]["family"])
    shown = nexus(node_address, "show", finished["job_id"]).stdout
    assert finished["model_selection"].split()[0] in shown


def test_jobs_json_lists_the_job(node_address, finished):
    proc = nexus(node_address, "jobs", "--json")
    assert proc.returncode == 0, proc.stderr
    assert finished["job_id"] in [j["job_id"] for j in json.loads(proc.stdout)]


def test_show_and_trials_of_the_job(node_address, finished):
    proc = nexus(node_address, "show", finished["job_id"])
    assert proc.returncode == 0 and f"{finished['job_id']}  COMPLETED" in proc.stdout
    proc = nexus(node_address, "trials", finished["job_id"], "--json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) >= 1


def test_predict_writes_one_row_per_input_row(node_address, finished, insurance_csv, tmp_path):
    out = tmp_path / "pred.csv"
    proc = nexus(node_address, "predict", finished["job_id"], str(insurance_csv), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    with open(insurance_csv, newline="") as f:
        n_input = sum(1 for _ in csv.DictReader(f))
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_input and all(float(r["prediction"]) == float(r["prediction"]) for r in rows)


def test_predict_says_how_many_rows_lie_outside_the_training_range(node_address, finished, tmp_path):
    rows = tmp_path / "new.csv"
    rows.write_text("age,sex,bmi,children,smoker,region\n"
                    "30,male,25.0,1,no,northeast\n"
                    "30,male,500.0,1,no,northeast\n"
                    "150,female,500.0,1,yes,southwest\n")
    proc = nexus(node_address, "predict", finished["job_id"], str(rows))
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 4   # the header and three predictions
    assert "2 of 3 rows lie outside the training range of bmi (2), age (1)" in proc.stderr


UNUSUAL_ROWS = ("age,sex,bmi,children,smoker,region\n"
                "30,martian,25.0,1,no,mars\n"       # two categories the model never saw
                "40,male,30.0,2,no,northeast\n"
                ",,,,,\n"                           # nothing the model could read
                "50,female,28.0,0,maybe,southwest\n")


def test_predict_reply_counts_unseen_categories_and_empty_rows(node_address, finished):
    with NexusClient(node_address) as client:
        # Text in a number column is the caller's mistake: refused with the column and row.
        with pytest.raises(grpc.RpcError) as bad:
            client.predict(finished["job_id"], b"age,sex,bmi,children,smoker,region\n"
                                               b"30,male,25.0,1,no,northeast\nold,martian,xx,0,no,mars\n")
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "column 'age' holds 'old' in row 2" in bad.value.details(), bad.value.details()
        with pytest.raises(grpc.RpcError) as bad:
            client.predict(finished["job_id"], b"age,sex,bmi,children,smoker,region\n41,martian,xx,0,no,mars\n")
        assert "column 'bmi' holds 'xx' in row 1" in bad.value.details(), bad.value.details()

        # New categories and an empty row are predicted, each row saying what it held...
        result = client.predict(finished["job_id"], UNUSUAL_ROWS.encode())
        assert len(result.rows) == 4 and all(r.value == r.value for r in result.rows)
        assert [(r.unseen_categories, r.empty) for r in result.rows] == [
            (("sex", "region"), False), ((), False), ((), True), (("smoker",), False)]
        # ... and the reply counting them, on its last message only.
        replies = list(client.predict_stream(finished["job_id"], UNUSUAL_ROWS.encode()))
        assert [r.HasField("warnings") for r in replies] == [False] * (len(replies) - 1) + [True]
        w = replies[-1].warnings
        assert (w.rows, w.unseen_category_rows, w.empty_rows) == (4, 2, 1)
        assert dict(w.unseen_categories) == {"sex": 1, "region": 1, "smoker": 1}


def test_predict_says_in_one_line_which_rows_hold_unseen_categories_or_nothing(node_address, finished, tmp_path):
    rows = tmp_path / "unusual.csv"
    rows.write_text(UNUSUAL_ROWS)
    proc = nexus(node_address, "predict", finished["job_id"], str(rows))
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 5   # the header and four predictions
    (line,) = proc.stderr.splitlines()
    assert line == ("warning: of 4 rows, 2 hold categories the model never learned: region (1), sex (1), "
                    "smoker (1); 1 is empty in every input column; predicted all the same, from what the "
                    "model learned of other values and of missing ones"), line


def test_output_paths_are_checked_before_the_download(node_address, finished, tmp_path):
    # A folder gets the model's own name inside it.
    proc = nexus(node_address, "export", finished["model_id"], "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    saved = tmp_path / f"{finished['model_id']}.zip"
    assert proc.stdout == f"{hashlib.sha256(saved.read_bytes()).hexdigest()}  {saved}\n"
    # A folder that does not exist: said plainly, exit 2, nothing written, no internal name.
    missing = tmp_path / "missing" / "dir"
    for args in (["export", finished["model_id"]], ["predict", finished["job_id"], str(tmp_path / "rows.csv")]):
        (tmp_path / "rows.csv").write_text("age,sex,bmi,children,smoker,region\n30,male,25.0,1,no,northeast\n")
        proc = nexus(node_address, *args, "-o", str(missing / "out"))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"error: {missing / 'out'}: the folder {missing} does not exist"
        assert ".part" not in proc.stderr and not missing.exists()


def test_a_tls_client_against_a_plaintext_node_is_told_so_in_one_line(node_address, tmp_path):
    from tests.net.test_tls import make_ca

    ca = make_ca(tmp_path, "ca")
    proc = nexus(node_address, "--tls-ca", str(ca), "jobs")
    assert proc.returncode == 3
    (line,) = proc.stderr.strip().splitlines()   # no gRPC core log beside it
    assert line.startswith("error: UNAVAILABLE") and f"the node at {node_address} speaks plaintext" in line


def test_export_matches_the_registered_artifact(node_address, finished, tmp_path):
    target = tmp_path / "model.bin"
    proc = nexus(node_address, "export", finished["model_id"], "-o", str(target))
    assert proc.returncode == 0, proc.stderr
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    assert proc.stdout == f"{digest}  {target}\n"
    models = json.loads(nexus(node_address, "models", "--json").stdout)
    assert {m["model_id"]: m["artifact_sha256"] for m in models}[finished["model_id"]] == digest


def test_show_unknown_job_is_a_user_mistake_exit_2_not_found(node_address):
    proc = nexus(node_address, "show", "no-such-job")
    assert proc.returncode == 2 and "NOT_FOUND" in proc.stderr and proc.stdout == ""


def test_submit_with_a_missing_target_exits_2_naming_the_column(node_address, insurance_csv):
    # A user mistake exits 2 whether the CLI or the node catches it.
    proc = nexus(node_address, "submit", str(insurance_csv), "--target", "premium")
    assert proc.returncode == 2 and proc.stderr.startswith("error: INVALID_ARGUMENT")
    assert "premium" in proc.stderr and proc.stdout == ""


def test_cluster_shows_the_node(node_address):
    proc = nexus(node_address, "cluster", "--json")
    assert proc.returncode == 0, proc.stderr
    view = json.loads(proc.stdout)
    me = next(n for n in view["nodes"] if n["address"] == node_address)
    # A one-node cluster: the node leads, and says so with its term, address and last contact.
    assert view["coordinator_id"] == me["node_id"] and me["role"] == "COORDINATOR"
    assert me["term"] == view["term"] >= 1 and me["last_contact"] > 0 and me["slots_total"] >= 1


def test_demo_runs_end_to_end(tmp_path):
    """`nexus demo` on its embedded node with the bundled data (a short budget here)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NEXUS_TOKEN", "NEXUS_ADDR")}
    env["NEXUS_DATA_DIR"] = os.devnull
    proc = subprocess.run(
        [sys.executable, "-m", "nexus_client.cli", "demo", "--trials", "2", "--time-budget", "60",
         "--data-dir", str(tmp_path / "demo")],
        env=env, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "COMPLETED" in proc.stdout and "r2" in proc.stdout
    assert "TRUE charges" in proc.stdout and "top features" in proc.stdout
    assert "demo finished in" in proc.stdout


def test_token_commands_create_list_and_revoke_a_role_token(tmp_path: Path):
    """`nexus token` as an admin runs it, and what each token can then do, on a real node."""
    from tests.conftest import NodeProcess

    (tmp_path / "admin").write_text("admin-secret\n")
    node = NodeProcess(tmp_path / "node", "--token-file", str(tmp_path / "admin")).start()
    try:
        admin = ("--token-file", str(tmp_path / "admin"))
        made = nexus(node.address, "token", "create", "--role", "read", "--name", "dashboard", "--json", *admin)
        assert made.returncode == 0, made.stderr
        secret = json.loads(made.stdout)["secret"]
        assert json.loads(made.stdout)["role"] == "read" and secret.startswith("nxt_")
        (tmp_path / "read").write_text(secret + "\n")
        listed = nexus(node.address, "token", "list", "--json", *admin)
        assert [(t["name"], t["role"]) for t in json.loads(listed.stdout)] == [("dashboard", "read")]
        assert secret not in listed.stdout

        reader = ("--token-file", str(tmp_path / "read"))
        assert nexus(node.address, "jobs", *reader).returncode == 0
        refused = nexus(node.address, "token", "list", *reader)
        assert refused.returncode == 2 and "PERMISSION_DENIED" in refused.stderr and "'admin' role" in refused.stderr
        dup = nexus(node.address, "token", "create", "--role", "submit", "--name", "dashboard", *admin)
        assert dup.returncode == 2 and "ALREADY_EXISTS" in dup.stderr

        revoked = nexus(node.address, "token", "revoke", "dashboard", *admin)
        assert revoked.returncode == 0 and "dashboard" in revoked.stdout
        gone = nexus(node.address, "jobs", *reader)
        assert gone.returncode == 2 and "UNAUTHENTICATED" in gone.stderr
        assert "no client tokens" in nexus(node.address, "token", "list", *admin).stdout
    finally:
        node.stop()
