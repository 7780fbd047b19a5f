"""The executive summary through the fake Gemini server, and its clean-up."""

from __future__ import annotations

import json

import pytest

from nexus_node.llm import LLMError, summarize
from nexus_node.llm.insights import MAX_CHARS, clean_summary
from nexus_node.llm.template import template_summary
from tests.llm.fake_gemini import GOOD_SUMMARY, MODEL_VERSION, answer, hang, raw_text, status

RESULT = dict(use_case="price health insurance", task="regression", target="charges", rows=1338,
              test_metrics={"r2": 0.85, "rmse": 4600.0, "mae": 2600.0},
              feature_importance={"smoker": 1.2, "age": 0.3, "bmi": 0.2, "region": 0.01})
TEMPLATE = template_summary("price health insurance", "regression", "charges",
                            RESULT["test_metrics"], RESULT["feature_importance"])


async def test_good_summary_is_used_with_the_results_in_the_prompt(fake, make_client):
    s = await summarize(make_client(), "", **RESULT)
    assert (s.text, s.source, s.model, s.fallback) == (GOOD_SUMMARY, "llm", MODEL_VERSION, "")
    body = json.loads(fake.requests[0].prompt.split("\n", 1)[1])
    assert body["goal"] == "price health insurance" and body["test_metrics"]["r2"] == 0.85
    assert body["feature_importance"][0] == ["smoker", 1.2]


@pytest.mark.parametrize("reply, reason", [
    (status(503), "503"),
    (raw_text("Smoking matters."), "not valid JSON"),
    (answer({"summary": 42}), "outside the schema"),
    (answer({"summary": " ** ## "}), "summary is empty"),
])
async def test_any_failure_gives_the_template(fake, make_client, reply, reason):
    fake.default = lambda r: reply
    s = await summarize(make_client(attempts=1), "", **RESULT)
    assert s.source == "template" and s.text == TEMPLATE and reason in s.fallback


async def test_hang_gives_the_template(fake, make_client):
    fake.push(hang())
    s = await summarize(make_client(timeout_s=0.3), "", **RESULT)
    assert s.source == "template" and "did not answer" in s.fallback


async def test_no_client_gives_the_template_and_the_reason():
    s = await summarize(None, "LLM switched off", **RESULT)
    assert (s.text, s.source, s.fallback) == (TEMPLATE, "template", "LLM switched off")


def test_markdown_is_stripped_but_column_names_survive():
    text = ("## Summary\n\n**Smoking** dominates *charges*.\n- `bmi_category` and age follow\n"
            "1. See [the docs](https://example.com).")
    assert clean_summary(text) == "Summary Smoking dominates charges. bmi_category and age follow See the docs."


def test_long_answers_are_cut_at_a_sentence():
    text = "The model is good. " * 200
    out = clean_summary(text)
    assert len(out) <= MAX_CHARS and out.endswith("good.")
    assert len(clean_summary("x" * 5000)) == MAX_CHARS


def test_empty_answer_is_an_error():
    with pytest.raises(LLMError):
        clean_summary("```\n```")
