"""The node's one way to call Gemini: the real google-genai client, bounded in time.

``google.genai`` costs about half a second and 25 MB to import, so it is imported only
when the first call is made, which happens only on a node that has a key: a node without
one never loads it.

Concurrency: :class:`GeminiClient` is used from the node's event loop only (its circuit
breaker is not thread-safe). It calls ``client.aio`` (httpx underneath), so a waiting call
blocks nothing; the client is built once, in a thread, because building it reads
certificates from disk.

Per call: at most ``attempts`` HTTP attempts, each limited to ``timeout_s``, the whole
call (backoff included) to ``deadline_s``. HTTP 429 and 5xx and connection errors are
retried after an exponential backoff with jitter; a timeout is not (an API that hung once
is likely to hang again, and the job is waiting); other 4xx are not (the request itself
is refused). google-genai's own retries stay off so these bounds are the only ones.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from nexus_node.llm.breaker import CircuitBreaker
from nexus_node.llm.settings import LLMSettings

log = logging.getLogger(__name__)


class LLMError(Exception):
    """A call produced no answer. ``str(err)`` is the reason a job records for its fallback.

    Attributes:
        outage: True when the API was unreachable, overloaded or too slow (what the
            circuit breaker counts), False when it answered but not usefully.
    """

    def __init__(self, reason: str, outage: bool = False) -> None:
        super().__init__(reason)
        self.outage = outage


@dataclass(frozen=True)
class Answer:
    """The text of the first candidate and the model that wrote it."""

    text: str
    model: str


class GeminiClient:
    """A bounded, retried, circuit-broken ``generate_content``.

    Args:
        settings: Key, model, endpoint and the timing bounds; must be ``enabled``.
        clock: Monotonic seconds (the breaker's ``now``).
        sleep: The backoff sleep.
        rng: Uniform [0, 1) for backoff jitter.
    """

    def __init__(
        self, settings: LLMSettings, clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, rng: Callable[[], float] = random.random,
    ) -> None:
        if not settings.enabled:
            raise ValueError(f"Gemini is not enabled: {settings.disabled_reason}")
        self.settings = settings
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s)
        self._clock, self._sleep, self._rng = clock, sleep, rng
        self._client: Any = None
        self._build_lock = asyncio.Lock()

    @property
    def model(self) -> str:
        return self.settings.model

    async def generate_json(self, *, system: str, prompt: str, schema: dict[str, Any], max_output_tokens: int) -> Answer:
        """Ask for a JSON answer constrained by ``schema`` (sent as ``responseJsonSchema``).

        Returns:
            The answer's raw text; parsing and validation are the caller's.

        Raises:
            LLMError: No answer; the message says why in words fit for the job record.
        """
        now = self._clock()
        if not self.breaker.allow(now):
            raise LLMError(
                f"Gemini skipped: {self.breaker.consecutive} calls in a row failed; "
                f"next try in {self.breaker.retry_in(now):.0f} s (circuit breaker)"
            )
        try:
            answer = await self._attempts(system, prompt, schema, max_output_tokens, now + self.settings.deadline_s)
        except LLMError as e:
            if e.outage:
                self.breaker.record_failure(self._clock())
            else:
                self.breaker.record_success(self._clock())   # it answered: the API is up
            raise
        except BaseException:
            self.breaker.record_abandoned()   # cancelled, or a bug: says nothing about the API
            raise
        self.breaker.record_success(self._clock())
        return answer

    async def _attempts(self, system: str, prompt: str, schema: dict[str, Any], max_tokens: int, deadline: float) -> Answer:
        from google.genai import errors, types

        client = await self._ensure_client()
        config = types.GenerateContentConfig(
            system_instruction=system, response_mime_type="application/json",
            response_json_schema=schema, temperature=0.2, max_output_tokens=max_tokens,
        )
        reason = "no attempt made"
        for attempt in range(1, max(1, self.settings.attempts) + 1):
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise LLMError(f"Gemini gave no usable answer within {self.settings.deadline_s:g} s ({reason})", outage=True)
            limit = min(self.settings.timeout_s, remaining)
            try:
                response = await asyncio.wait_for(
                    client.aio.models.generate_content(model=self.settings.model, contents=prompt, config=config),
                    timeout=limit,
                )
            except errors.APIError as e:
                code = int(e.code or 0)
                if code != 429 and code < 500:
                    raise LLMError(f"Gemini refused the request: HTTP {code} {_short(e.message or e.status)}") from None
                reason = f"HTTP {code} {_short(e.status or e.message)}".strip()
            except (asyncio.TimeoutError, TimeoutError):
                raise LLMError(f"Gemini did not answer within {limit:.3g} s", outage=True) from None
            except Exception as e:   # httpx transport errors, whichever httpx flavour is installed
                if "Timeout" in type(e).__name__:
                    raise LLMError(f"Gemini did not answer within {limit:.3g} s", outage=True) from None
                reason = f"{type(e).__name__}: {_short(str(e))}"
            else:
                return _answer(response, self.settings.model)
            if attempt < self.settings.attempts:
                delay = self.settings.backoff_s * 2 ** (attempt - 1) * (0.5 + self._rng() / 2)
                if self._clock() + delay >= deadline:
                    break
                log.info("Gemini call failed (%s); retry %d in %.2f s", reason, attempt, delay)
                await self._sleep(delay)
        raise LLMError(f"Gemini failed after {attempt} attempt{'s' if attempt > 1 else ''}: {reason}", outage=True)

    async def _ensure_client(self) -> Any:
        async with self._build_lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._build)
        return self._client

    def _build(self) -> Any:
        from google import genai
        from google.genai import types

        options = types.HttpOptions(
            base_url=self.settings.base_url or None, timeout=int(self.settings.timeout_s * 1000),
        )
        # vertexai=False: a GOOGLE_GENAI_USE_VERTEXAI in the node's environment must not
        # send the prompt to another service than the one the docs name.
        return genai.Client(api_key=self.settings.api_key, vertexai=False, http_options=options)

    async def aclose(self) -> None:
        """Close the HTTP connections (node shutdown)."""
        if self._client is not None:
            await self._client.aio.aclose()
            self._client = None


def failure_reason(e: Exception) -> str:
    """The fallback reason a job records for an exception from an LLM call.

    An :class:`LLMError` already says why in plain words; anything else is a bug here or in
    the client library, logged with its traceback and still turned into a fallback, since
    a job never fails because of the LLM.
    """
    if isinstance(e, LLMError):
        return str(e)
    log.error("unexpected error in a Gemini call", exc_info=e)
    return f"internal error while asking Gemini: {type(e).__name__}: {_short(str(e))}"


def _answer(response: Any, requested_model: str) -> Answer:
    text = response.text
    if not text or not text.strip():
        finish = ""
        if response.candidates:
            finish = str(getattr(response.candidates[0], "finish_reason", "") or "")
        raise LLMError("Gemini returned an empty answer" + (f" (finish reason {finish})" if finish else ""))
    return Answer(text=text, model=str(response.model_version or requested_model))


def _short(text: Any, n: int = 120) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"
