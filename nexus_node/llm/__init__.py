"""Gemini in Nexus: the constraint engine and the executive summary, with fallbacks.

Importing this package is cheap: ``google.genai`` is imported only when a configured
client makes its first call (see :mod:`.gemini`).

Public API:

* :func:`resolve` / :class:`LLMSettings`: flags and environment to settings.
* :class:`GeminiClient`: bounded, retried, circuit-broken calls.
* :func:`decide_constraints`, :func:`summarize`: the two uses; neither ever raises for an
  LLM failure.
* :func:`dataset_metadata`: what of a dataset may leave the cluster.
"""

from nexus_node.llm.constraint_engine import ConstraintDecision, decide_constraints
from nexus_node.llm.gemini import GeminiClient, LLMError
from nexus_node.llm.insights import SummaryDecision, summarize
from nexus_node.llm.privacy import dataset_metadata
from nexus_node.llm.settings import DEFAULT_MODEL, LLMSettings, resolve

__all__ = [
    "DEFAULT_MODEL", "ConstraintDecision", "GeminiClient", "LLMError", "LLMSettings", "SummaryDecision",
    "dataset_metadata", "decide_constraints", "resolve", "summarize",
]
