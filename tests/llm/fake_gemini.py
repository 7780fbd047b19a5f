"""A fake Gemini API on loopback for tests: the real google-genai client talks to it.

It answers ``POST /{version}/models/{model}:generateContent`` the way the Gemini API does
(a ``candidates`` list whose first part holds the text), from a script of replies the test
pushes; with the script empty it answers a default (see :meth:`FakeGemini.default`). Every
request body is recorded. A ``HANG`` reply blocks the handler until the test releases it
(:meth:`stop` does), so a timeout test needs no sleep.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

HANG = "hang"
MODEL_VERSION = "gemini-fake-001"


@dataclass
class Reply:
    status: int = 200
    text: str | None = None       # the candidate's text (status 200)
    hang: bool = False


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.raw)

    @property
    def prompt(self) -> str:
        return "".join(p.get("text", "") for c in self.body.get("contents", []) for p in c.get("parts", []))

    @property
    def kind(self) -> str:
        """``"summary"`` or ``"constraints"``, from the response schema asked for."""
        schema = self.body.get("generationConfig", {}).get("responseJsonSchema", {})
        return "summary" if "summary" in schema.get("properties", {}) else "constraints"


def answer(obj: Any) -> Reply:
    """A 200 whose text is ``obj`` as JSON."""
    return Reply(text=json.dumps(obj))


def raw_text(text: str) -> Reply:
    return Reply(text=text)


def status(code: int) -> Reply:
    return Reply(status=code)


def hang() -> Reply:
    return Reply(hang=True)


GOOD_CONSTRAINTS = {
    "max_layers": 2, "widths": [32, 64], "activations": ["relu", "gelu"], "dropout": [0.0, 0.2],
    "learning_rate": [0.001, 0.02], "batch_sizes": [32, 64], "max_epochs": 8, "min_epochs": 3,
    "families": ["mlp"], "rationale": "1,338 rows and 6 columns: a shallow, narrow network suffices",
}
GOOD_SUMMARY = "Smoking status dominates insurance charges; age and BMI follow. The model explains most of the variation."


class FakeGemini:
    """A threaded HTTP server on 127.0.0.1 speaking enough of the Gemini REST API."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.release = threading.Event()
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.default: Callable[[Recorded], Reply] = lambda r: (
            raw_text(json.dumps({"summary": GOOD_SUMMARY})) if r.kind == "summary" else answer(GOOD_CONSTRAINTS)
        )
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                rec = Recorded(self.path, dict(self.headers), raw)
                with fake._lock:
                    fake.requests.append(rec)
                    reply = fake._script.popleft() if fake._script else fake.default(rec)
                if ":generateContent" not in self.path:
                    reply = Reply(status=404)
                if reply.hang:
                    fake.release.wait()
                    return   # the client gave up long ago
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                if reply.status == 200:
                    body = {"candidates": [{"content": {"role": "model", "parts": [{"text": reply.text}]},
                                            "finishReason": "STOP", "index": 0}],
                            "modelVersion": MODEL_VERSION}
                else:
                    body = {"error": {"code": reply.status, "message": "scripted failure", "status": "UNAVAILABLE"}}
                data = json.dumps(body).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A short poll interval only makes shutdown() prompt; nothing waits on it otherwise.
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-gemini", daemon=True,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def push(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._script.extend(replies)

    def bodies(self) -> str:
        """Every request body so far, as one string (for "does X appear anywhere")."""
        return "\n".join(r.raw.decode("utf-8") for r in self.requests)

    def start(self) -> "FakeGemini":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()   # frees hung handlers first, so shutdown does not wait on them
        self.server.shutdown()
        self.server.server_close()
