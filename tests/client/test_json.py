"""JSON shaping of hand-built protobuf messages (the CLI's --json contract)."""

from __future__ import annotations

import json

from nexus_client.client import cluster_to_dict, job_to_dict, model_to_dict, trial_to_dict, trials_done
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from tests.client.fake_node import finished_job


def test_a_finished_job_has_every_contract_key():
    spec = pb.JobSpec(target="charges", max_trials=24, filename="insurance.csv", drop_columns=["id"])
    d = job_to_dict(finished_job("j1", spec))
    assert d["job_id"] == "j1" and d["state"] == "COMPLETED"
    assert d["trials"] == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 0, "RUNNING": 0, "WAITING": 0, "LOST": 0}
    assert d["model_id"] == "m-j1"
    assert d["test_metrics"] == {"mae": 2500.25, "r2": 0.86, "rmse": 4500.5}
    # Most important first, as the node ordered them; negative importances kept.
    assert list(d["feature_importance"].items()) == [("smoker", 0.61), ("age", 0.2), ("region", -0.01)]
    assert d["task"] == "REGRESSION" and d["metric"] == "r2" and d["best_value"] == 0.8512
    assert d["constraints_source"] == "heuristic"
    assert d["constraints"]["rationale"] == "1338 rows: small network"
    assert d["best_params"] == {"layers": 2, "lr": 0.01}
    assert d["profile"] == {"rows": 1338}
    assert (d["created_at"], d["finished_at"]) == (1_700_000_000.0, 1_700_000_031.0)
    assert (d["seed"], d["encoding"], d["study_name"]) == (42, "utf-8", "nexus-j1")
    assert d["spec"]["drop_columns"] == ["id"] and d["spec"]["max_trials"] == 24
    assert json.loads(json.dumps(d)) == d


def test_a_fresh_job_has_nones_where_nothing_is_known_yet():
    d = job_to_dict(pb.Job(job_id="j2", state=pb.PENDING, best_value=0.0, has_best=False))
    assert d["state"] == "PENDING"
    assert d["best_value"] is None and d["task"] is None
    assert d["constraints"] is None and d["best_params"] is None
    assert d["started_at"] is None and d["finished_at"] is None
    assert d["test_metrics"] == {} and d["feature_importance"] == {}
    assert d["model_id"] == ""


def test_a_best_value_of_zero_is_a_value():
    d = job_to_dict(pb.Job(job_id="j3", best_value=0.0, has_best=True))
    assert d["best_value"] == 0.0


def test_a_json_field_that_is_not_json_is_passed_through():
    assert job_to_dict(pb.Job(constraints_json="{broken"))["constraints"] == "{broken"


def test_trials_done_counts_every_finished_outcome():
    job = pb.Job(trials=pb.TrialCounts(complete=3, pruned=2, fail=1, running=4, waiting=5))
    assert trials_done(job) == 6


def test_model_trial_and_cluster_dicts():
    m = model_to_dict(pb.Model(model_id="m1", job_id="j1", task=pb.BINARY, classes=["no", "yes"],
                               input_columns=["a"], test_metrics={"accuracy": 0.9}, params_json='{"w": 8}'))
    assert (m["task"], m["classes"], m["params"], m["test_metrics"]) == ("BINARY", ["no", "yes"], {"w": 8}, {"accuracy": 0.9})
    t = trial_to_dict(pb.TrialInfo(number=4, state="PRUNED", value=0.0, has_value=False, last_step=3))
    assert (t["number"], t["state"], t["value"], t["last_step"], t["params"]) == (4, "PRUNED", None, 3, None)
    assert t["retry_of"] is None
    assert trial_to_dict(pb.TrialInfo(number=9, state="COMPLETE", retry_of=0))["retry_of"] == 0   # 0 is a trial
    c = cluster_to_dict(pb.Cluster(cluster_name="lab", term=2, nodes=[pb.NodeInfo(node_id="n1", role=pb.VOTER, running=["j/1"])]))
    assert c["nodes"][0]["role"] == "VOTER" and c["nodes"][0]["running"] == ["j/1"]
    assert json.loads(json.dumps([m, t, c])) == [m, t, c]
