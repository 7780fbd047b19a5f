"""Flags and environment to LLM settings; the node stays light without a key."""

from __future__ import annotations

import json
import subprocess
import sys

from nexus_node.llm import DEFAULT_MODEL, resolve
from nexus_node.node.main import parse_args


def test_gemini_key_wins_over_google_key():
    s = resolve("auto", "", "", {"GOOGLE_API_KEY": "g", "GEMINI_API_KEY": "m"})
    assert s.enabled and s.api_key == "m" and s.model == DEFAULT_MODEL
    assert resolve("auto", "", "", {"GOOGLE_API_KEY": "g"}).api_key == "g"


def test_no_key_or_off_disables_with_a_reason():
    none = resolve("auto", "", "", {"GEMINI_API_KEY": "  "})
    assert not none.enabled and "GEMINI_API_KEY" in none.disabled_reason
    off = resolve("off", "", "", {"GEMINI_API_KEY": "k"})
    assert not off.enabled and off.api_key == "" and "--llm off" in off.disabled_reason


def test_node_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    cfg = parse_args(["--data-dir", str(tmp_path), "--llm-model", "gemini-x", "--llm-base-url", "http://127.0.0.1:9",
                      "--llm-timeout", "2"])
    assert cfg.llm.enabled and cfg.llm.model == "gemini-x" and cfg.llm.base_url == "http://127.0.0.1:9"
    assert cfg.llm.timeout_s == 2.0
    assert not parse_args(["--data-dir", str(tmp_path), "--llm", "off"]).llm.enabled


def test_the_node_does_not_import_google_genai():
    code = ("import sys, nexus_node.node.main, nexus_node.llm, nexus_node.jobs.manager; "
            "print(sorted(m for m in ('google.genai', 'pandas', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == []
