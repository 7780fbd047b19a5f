"""End to end: a real node process with a key, pointed at the fake Gemini server."""

from __future__ import annotations

import json

from nexus_client.cli import format_job
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from tests.llm.fake_gemini import GOOD_CONSTRAINTS, GOOD_SUMMARY, MODEL_VERSION, status
from tests.node.helpers import FAST, stub, submit, watch_until_end

USE_CASE = "price health insurance for new customers"


def test_a_job_uses_gemini_for_constraints_and_summary_and_survives_its_outage(
    fake, node_factory, insurance_csv,
):
    node = node_factory("gemini", "--slots", "2", "--llm-base-url", fake.base_url,
                        env={"GEMINI_API_KEY": "test-key"}).start()
    s = stub(node.address)

    # No user constraints: Gemini's answer (2 narrow layers, 8 epochs) is the space.
    job_id = submit(s, insurance_csv, "charges", use_case=USE_CASE, max_trials=3, constraints_json="").job_id
    job, _ = watch_until_end(s, job_id)
    assert job.state == pb.COMPLETED, job.message
    assert (job.constraints_source, job.constraints_model, job.constraints_fallback) == ("llm", MODEL_VERSION, "")
    assert job.constraints_rationale == GOOD_CONSTRAINTS["rationale"]
    c = json.loads(job.constraints_json)
    assert (c["max_layers"], c["widths"], c["max_epochs"]) == (2, [32, 64], 8)
    assert (job.summary, job.summary_source, job.summary_model) == (GOOD_SUMMARY, "llm", MODEL_VERSION)
    assert [r.kind for r in fake.requests] == ["constraints", "summary"]
    assert USE_CASE in fake.requests[0].prompt and USE_CASE in fake.requests[1].prompt
    rows = insurance_csv.read_text().splitlines()[1:]
    assert not [row for row in rows if row in fake.bodies()]
    shown = format_job(job)
    assert f"constraints  llm {MODEL_VERSION}: {GOOD_CONSTRAINTS['rationale']}" in shown
    assert f"summary (by {MODEL_VERSION})" in shown

    # Gemini down: the job still completes, on the user's constraints and the template.
    fake.default = lambda r: status(503)
    job_id = submit(s, insurance_csv, "charges", use_case=USE_CASE, max_trials=2, constraints_json=FAST).job_id
    job, _ = watch_until_end(s, job_id)
    assert job.state == pb.COMPLETED, job.message
    assert job.constraints_source == "user" and "503" in job.constraints_fallback
    assert job.summary_source == "template" and "503" in job.summary_fallback and "charges" in job.summary
    assert "LLM not used: Gemini failed after 3 attempts: HTTP 503" in format_job(job)
