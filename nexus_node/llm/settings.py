"""Where the node's Gemini settings come from: flags and the environment.

Pure: reads nothing itself; the caller passes the environment mapping, so tests need not
touch ``os.environ``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

# The current Gemini flash model named in google-genai 3.6.1's own examples (client.py).
DEFAULT_MODEL = "gemini-3.8-flash"
KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


@dataclass(frozen=True)
class LLMSettings:
    """How (and whether) the node talks to Gemini.

    Attributes:
        api_key: The key; empty means the LLM is not used.
        model: Model name passed to ``generate_content``.
        base_url: API endpoint override (a proxy, or a fake server in tests); empty for
            Google's default.
        disabled_reason: Why the LLM is not used (empty when it is); jobs record it as
            their fallback reason.
        timeout_s: Limit of one HTTP attempt.
        deadline_s: Limit of one whole call, retries and backoff included.
        attempts: Attempts per call, the first included (429 and 5xx are retried).
        backoff_s: First backoff delay; each retry doubles it (with jitter).
        breaker_failures: Consecutive failed calls that open the circuit breaker.
        breaker_cooldown_s: How long an open breaker refuses calls before one probe.
    """

    api_key: str = ""
    model: str = DEFAULT_MODEL
    base_url: str = ""
    disabled_reason: str = "no Gemini API key (set GEMINI_API_KEY or GOOGLE_API_KEY)"
    timeout_s: float = 20.0
    deadline_s: float = 45.0
    attempts: int = 3
    backoff_s: float = 1.0
    breaker_failures: int = 3
    breaker_cooldown_s: float = 120.0

    @property
    def enabled(self) -> bool:
        return bool(self.api_key) and not self.disabled_reason


def resolve(mode: str, model: str, base_url: str, env: Mapping[str, str], **tuning: float) -> LLMSettings:
    """Settings from the node's flags and environment.

    Args:
        mode: ``"auto"`` (use Gemini when a key is set) or ``"off"``.
        model: ``--llm-model``; empty for :data:`DEFAULT_MODEL`.
        base_url: ``--llm-base-url``; empty for Google's endpoint.
        env: The environment; ``GEMINI_API_KEY`` wins over ``GOOGLE_API_KEY`` (the order
            google-genai itself prefers).
        **tuning: Overrides of the timing fields of :class:`LLMSettings`.

    Returns:
        The settings; ``enabled`` is False with a reason when there is no key or the LLM
        is switched off.
    """
    key = next((env[k].strip() for k in KEY_VARIABLES if env.get(k, "").strip()), "")
    if mode == "off":
        reason = "LLM switched off on this node (--llm off)"
    elif not key:
        reason = LLMSettings.disabled_reason
    else:
        reason = ""
    return LLMSettings(
        api_key=key if mode != "off" else "", model=model.strip() or DEFAULT_MODEL,
        base_url=base_url.strip(), disabled_reason=reason, **tuning,  # type: ignore[arg-type]
    )
