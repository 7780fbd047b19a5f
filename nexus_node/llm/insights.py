"""Executive insights: Gemini's plain-text summary of a finished model, or the template.

The prompt carries the use case, the task, the target's name, the test metrics and the
permutation importance of the columns (names and numbers, no data). The answer is
stripped of markdown and bounded to :data:`MAX_CHARS`; any failure gives
:func:`~nexus_node.llm.template.template_summary` and the reason. Nothing here raises.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping

from nexus_node.llm.constraint_engine import MAX_USE_CASE_CHARS, parse_answer
from nexus_node.llm.gemini import GeminiClient, LLMError, failure_reason
from nexus_node.llm.template import template_summary

log = logging.getLogger(__name__)

MAX_CHARS = 1200
TOP_FEATURES = 10
SYSTEM = (
    "You write the executive summary of a machine-learning model for a business reader: three "
    "to five plain sentences, no markdown, no lists, no headings. Say in plain words how well the "
    "model does on held-out test data, which inputs drive its predictions (permutation importance: "
    "how much the score drops when a column is shuffled) and one caveat. Use only the numbers given."
)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"summary": {"type": "string", "maxLength": MAX_CHARS}},
    "required": ["summary"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class SummaryDecision:
    """The summary a job shows. ``source`` is ``"llm"`` or ``"template"``; ``fallback``
    says why the LLM's was not used (empty when it was)."""

    text: str
    source: str
    model: str = ""
    fallback: str = ""


def summary_prompt(
    use_case: str, task: str, target: str, rows: int, test_metrics: Mapping[str, float],
    feature_importance: Mapping[str, float],
) -> str:
    """The user part of the prompt: JSON of the job's results (no data)."""
    ranked = sorted(feature_importance.items(), key=lambda kv: -kv[1])[:TOP_FEATURES]
    body = {
        "goal": " ".join(str(use_case).split())[:MAX_USE_CASE_CHARS] or "(not given)",
        "task": task, "target": target, "rows": rows,
        "test_metrics": {k: float(f"{v:.4g}") for k, v in sorted(test_metrics.items())},
        "feature_importance": [[k, float(f"{v:.3g}")] for k, v in ranked],
    }
    return "Summarise this model.\n" + json.dumps(body, indent=1)


_FENCE = re.compile(r"```[a-zA-Z]*")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_LINE_MARK = re.compile(r"^\s*(?:#{1,6}\s+|[-*+•]\s+|\d+[.)]\s+|>\s*)", re.MULTILINE)
_EMPHASIS = re.compile(r"(\*\*|__|\*(?=\S)|(?<=\S)\*|`)")
_STRAY = re.compile(r"(?<!\S)[#*>~]+(?!\S)")   # marks left standing alone, e.g. "##" mid-line


def clean_summary(text: str) -> str:
    """Plain text from a model's answer: no markdown marks, one paragraph, at most
    :data:`MAX_CHARS` characters (cut at the last full sentence that fits).

    Raises:
        LLMError: Nothing is left.
    """
    s = _FENCE.sub("", text)
    s = _LINK.sub(r"\1", s)
    s = _LINE_MARK.sub("", s)
    s = _EMPHASIS.sub("", s)
    s = _STRAY.sub("", s)
    s = " ".join(s.split())
    if not s:
        raise LLMError("Gemini's summary is empty")
    if len(s) <= MAX_CHARS:
        return s
    cut = s[:MAX_CHARS]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return cut[: end + 1] if end >= MAX_CHARS // 2 else cut[: MAX_CHARS - 1].rstrip() + "…"


async def summarize(
    llm: GeminiClient | None, unavailable: str, *, use_case: str, task: str, target: str, rows: int,
    test_metrics: Mapping[str, float], feature_importance: Mapping[str, float],
) -> SummaryDecision:
    """The job's executive summary: Gemini's when usable, else the deterministic template.

    Args:
        llm: The node's client, or None when the LLM is not configured.
        unavailable: Why ``llm`` is None (recorded as the fallback reason).

    Returns:
        The decision; never raises for an LLM failure.
    """
    template = template_summary(use_case, task, target, test_metrics, feature_importance)
    if llm is None:
        return SummaryDecision(template, "template", fallback=unavailable)
    try:
        answer = await llm.generate_json(
            system=SYSTEM, prompt=summary_prompt(use_case, task, target, rows, test_metrics, feature_importance),
            schema=SCHEMA, max_output_tokens=2048,
        )
        text = clean_summary(parse_answer(answer.text, SCHEMA)["summary"])
        return SummaryDecision(text, "llm", model=answer.model)
    except Exception as e:   # the pipeline never fails at the finish line
        reason = failure_reason(e)
    log.info("template summary: %s", reason)
    return SummaryDecision(template, "template", fallback=reason)
