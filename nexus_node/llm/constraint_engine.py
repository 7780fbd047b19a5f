"""The constraint engine: Gemini proposes the search space, the hard bounds have the last word.

The prompt carries only :func:`~nexus_node.llm.privacy.dataset_metadata`, the user's use
case, the smallest worker's free memory, the limits and the heuristic's space as a
starting point. The answer is parsed, validated against the schema's shape and applied
over the heuristic's constraints with :func:`~nexus_node.study.constraints.apply_override`, which
clamps every value into the bounds computed from the data and the memory: the model may
narrow the space, never widen it past what the smallest node can hold. Any failure gives
the heuristic's constraints and the reason; nothing here raises.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from nexus_node.llm.gemini import GeminiClient, LLMError, failure_reason
from nexus_node.llm.privacy import dataset_metadata
from nexus_node.llm.schema import SchemaError, constraints_schema, validate
from nexus_node.study.constraints import Bounds, Constraints, apply_override, hard_bounds, heuristic_constraints

log = logging.getLogger(__name__)

MAX_USE_CASE_CHARS = 1000
SYSTEM = (
    "You choose the hyperparameter search space for an Optuna search over PyTorch MLPs on one "
    "tabular dataset. You see the dataset's metadata (never its rows), the user's goal, the "
    "memory of the smallest worker and hard limits. Narrow the default space where the data size, "
    "the feature count, the task or the goal justify it (small data: fewer, narrower layers and "
    "more dropout; large data: larger batches and fewer epochs). Stay inside the limits. Answer "
    "with JSON matching the response schema; the rationale is one plain sentence."
)


@dataclass(frozen=True)
class ConstraintDecision:
    """What the engine decided, for the job record.

    Attributes:
        constraints: The constraints the search runs under (``source`` is ``"llm"`` or
            ``"heuristic"``).
        engine: ``"llm"`` or ``"heuristic"``.
        model: The Gemini model that answered (empty for the heuristic).
        rationale: One line on why this space.
        fallback: Why the LLM's answer was not used (empty when it was).
    """

    constraints: Constraints
    engine: str
    model: str = ""
    rationale: str = ""
    fallback: str = ""


def constraints_prompt(
    profile: Mapping[str, Any], use_case: str, memory_bytes: int, bounds: Bounds, default: Constraints,
) -> str:
    """The user part of the prompt: JSON of metadata only (see :mod:`.privacy`)."""
    space = {k: v for k, v in default.to_dict().items() if k not in ("source", "notes", "rationale")}
    body = {
        "goal": " ".join(str(use_case).split())[:MAX_USE_CASE_CHARS] or "(not given)",
        "dataset": dataset_metadata(profile),
        "smallest_worker_free_memory_mb": int(memory_bytes >> 20),
        "limits": {
            "max_layers": bounds.max_layers, "max_width": bounds.max_width,
            "max_batch_size": bounds.max_batch, "max_epochs": bounds.max_epochs,
        },
        "default_space": space,
    }
    return "Choose the search space for this job.\n" + json.dumps(body, indent=1, sort_keys=True)


def parse_answer(text: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The answer's JSON, checked against ``schema``'s shape.

    Raises:
        LLMError: Not JSON, or not of the schema's shape.
    """
    body = text.strip()
    if body.startswith("```"):
        # Some models fence JSON even when asked for application/json.
        body = body.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise LLMError(f"Gemini's answer is not valid JSON ({e.msg} at char {e.pos})") from None
    try:
        return validate(data, schema)
    except SchemaError as e:
        raise LLMError(f"Gemini's answer is outside the schema: {e}") from None


async def decide_constraints(
    llm: GeminiClient | None, unavailable: str, profile: Mapping[str, Any], use_case: str, memory_bytes: int,
) -> ConstraintDecision:
    """Constraints for a job: Gemini's when it gives a usable answer, else the heuristic's.

    Args:
        llm: The node's client, or None when the LLM is not configured.
        unavailable: Why ``llm`` is None (recorded as the fallback reason).
        profile: The job's dataset profile.
        use_case: The user's words for the goal.
        memory_bytes: The smallest worker's free memory.

    Returns:
        The decision; never raises for an LLM failure.
    """
    base = heuristic_constraints(profile, memory_bytes)
    if llm is None:
        return ConstraintDecision(base, "heuristic", rationale=base.rationale, fallback=unavailable)
    bounds = hard_bounds(int(profile.get("rows", 0)), int(profile.get("n_features", 0)), memory_bytes)
    schema = constraints_schema(bounds)
    try:
        answer = await llm.generate_json(
            system=SYSTEM, prompt=constraints_prompt(profile, use_case, memory_bytes, bounds, base),
            schema=schema, max_output_tokens=4096,
        )
        chosen = apply_override(base, parse_answer(answer.text, schema), bounds, source="llm")
        return ConstraintDecision(chosen, "llm", model=answer.model, rationale=chosen.rationale)
    except Exception as e:   # a job never fails because of the LLM
        reason = failure_reason(e)
    log.info("heuristic constraints: %s", reason)
    return ConstraintDecision(base, "heuristic", rationale=base.rationale, fallback=reason)
