"""The constraint engine through the real google-genai client and a fake Gemini server."""

from __future__ import annotations

import json

from nexus_node.llm import decide_constraints
from nexus_node.study.constraints import hard_bounds, heuristic_constraints
from tests.llm.fake_gemini import GOOD_CONSTRAINTS, MODEL_VERSION, answer, hang, raw_text, status

MEMORY = 8 << 30
USE_CASE = "price health insurance premiums for the Q3 renewal campaign"


async def decide(client, profile, use_case=USE_CASE):
    return await decide_constraints(client, "", profile, use_case, MEMORY)


async def test_good_answer_is_used_and_recorded(fake, make_client, insurance_profile):
    d = await decide(make_client(), insurance_profile)
    assert (d.engine, d.model, d.fallback) == ("llm", MODEL_VERSION, "")
    c = d.constraints
    assert c.source == "llm"
    assert (c.max_layers, c.widths, c.batch_sizes, c.max_epochs) == (2, (32, 64), (32, 64), 8)
    assert c.dropout == (0.0, 0.2) and c.activations == ("relu", "gelu")
    assert d.rationale == GOOD_CONSTRAINTS["rationale"] == c.rationale
    [req] = fake.requests
    assert req.path.endswith("/models/gemini-3.8-flash:generateContent")
    assert req.headers.get("x-goog-api-key") == "test-key"
    config = req.body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert "max_layers" in config["responseJsonSchema"]["required"]


async def test_use_case_and_metadata_reach_the_prompt(fake, make_client, insurance_profile):
    await decide(make_client(), insurance_profile)
    prompt = fake.requests[0].prompt
    assert USE_CASE in prompt
    body = json.loads(prompt.split("\n", 1)[1])
    assert body["dataset"]["rows"] == 1338 and body["dataset"]["task"] == "regression"
    assert {c["name"] for c in body["dataset"]["columns"]} == {"age", "sex", "bmi", "children", "smoker", "region"}
    assert body["limits"]["max_layers"] == 8


async def test_no_client_is_the_heuristic_with_the_reason(insurance_profile):
    d = await decide_constraints(None, "no Gemini API key", insurance_profile, USE_CASE, MEMORY)
    assert d.engine == "heuristic" and d.fallback == "no Gemini API key"
    assert d.constraints == heuristic_constraints(insurance_profile, MEMORY)


async def test_503_every_time_falls_back_after_bounded_retries(fake, make_client, insurance_profile):
    fake.default = lambda r: status(503)
    d = await decide(make_client(attempts=3), insurance_profile)
    assert d.engine == "heuristic" and d.constraints == heuristic_constraints(insurance_profile, MEMORY)
    assert "503" in d.fallback and "3 attempts" in d.fallback
    assert len(fake.requests) == 3


async def test_429_then_success_after_a_retry(fake, make_client, insurance_profile):
    fake.push(status(429))
    client = make_client()
    d = await decide(client, insurance_profile)
    assert d.engine == "llm" and d.fallback == ""
    assert len(fake.requests) == 2
    assert client.breaker.consecutive == 0


async def test_a_hang_past_the_timeout_falls_back(fake, make_client, insurance_profile):
    fake.push(hang())
    d = await decide(make_client(timeout_s=0.3), insurance_profile)
    assert d.engine == "heuristic"
    assert "did not answer within 0.3 s" in d.fallback
    assert len(fake.requests) == 1   # a hang is not retried: the job is waiting


async def test_invalid_json_falls_back(fake, make_client, insurance_profile):
    fake.push(raw_text('{"max_layers": 2, "widths": [32,'))
    d = await decide(make_client(), insurance_profile)
    assert d.engine == "heuristic" and "not valid JSON" in d.fallback


async def test_valid_json_outside_the_schema_falls_back(fake, make_client, insurance_profile):
    client = make_client()
    fake.push(answer({**GOOD_CONSTRAINTS, "widths": "wide"}))
    d = await decide(client, insurance_profile)
    assert d.engine == "heuristic" and "outside the schema" in d.fallback and "$.widths" in d.fallback
    fake.push(answer({k: v for k, v in GOOD_CONSTRAINTS.items() if k != "rationale"}))
    assert "lacks required rationale" in (await decide(client, insurance_profile)).fallback
    fake.push(answer([GOOD_CONSTRAINTS]))
    assert "should be an object" in (await decide(client, insurance_profile)).fallback
    # An unusable answer proves the API is up: it does not count towards the breaker.
    assert client.breaker.consecutive == 0


async def test_absurd_values_are_clamped_into_the_hard_bounds(fake, make_client, insurance_profile):
    fake.push(answer({**GOOD_CONSTRAINTS, "max_layers": 500, "dropout": [0.1, 3.0], "widths": [64, 1 << 20],
                      "batch_sizes": [32, 3], "max_epochs": 100_000, "learning_rate": [-1.0, 50.0],
                      "activations": ["relu", "sigmoid-of-doom"]}))
    d = await decide(make_client(), insurance_profile)
    c = d.constraints
    bounds = hard_bounds(1338, insurance_profile["n_features"], MEMORY)
    assert d.engine == "llm"
    assert c.max_layers == bounds.max_layers and c.max_epochs == bounds.max_epochs
    assert c.dropout == (0.1, 0.7) and c.widths == (64,) and c.batch_sizes == (32,)
    assert c.learning_rate == (1e-5, 1.0) and c.activations == ("relu",)
    assert any("layers clamped" in n for n in c.notes) and any("dropout clamped" in n for n in c.notes)


async def test_integral_floats_count_as_integers(fake, make_client, insurance_profile):
    fake.push(answer({**GOOD_CONSTRAINTS, "max_layers": 3.0, "widths": [64.0]}))
    c = (await decide(make_client(), insurance_profile)).constraints
    assert c.max_layers == 3 and c.widths == (64,)


async def test_breaker_opens_after_repeated_outages_and_skips_the_api(fake, make_client, insurance_profile):
    fake.default = lambda r: status(500)
    client = make_client(attempts=1, breaker_failures=2, breaker_cooldown_s=3600)
    for _ in range(2):
        assert "500" in (await decide(client, insurance_profile)).fallback
    d = await decide(client, insurance_profile)
    assert d.engine == "heuristic" and "circuit breaker" in d.fallback
    assert len(fake.requests) == 2   # the third job did not wait on a dead API


async def test_fenced_json_is_accepted(fake, make_client, insurance_profile):
    fake.push(raw_text("```json\n" + json.dumps(GOOD_CONSTRAINTS) + "\n```"))
    assert (await decide(make_client(), insurance_profile)).engine == "llm"


async def test_a_bug_in_the_call_is_still_a_fallback(insurance_profile):
    class Broken:
        async def generate_json(self, **kwargs):
            raise RuntimeError("boom")

    d = await decide(Broken(), insurance_profile)
    assert d.engine == "heuristic" and d.fallback == "internal error while asking Gemini: RuntimeError: boom"
