"""``nexus dashboard``: optuna-dashboard over a tokened node, loaded in headless Chromium.

A real node with a token runs a small job; ``nexus dashboard JOB`` runs as a user starts it,
with a read-only token; Chromium (Debian's ``chromium``, installed by .ci/run) runs the page's
JavaScript and the test reads the DOM it built. The screenshot it takes is the README's
(``NEXUS_SAVE_SCREENSHOTS=1`` copies it to docs/dashboard.png).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from nexus_client import cli
from nexus_client.client import NexusClient
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from tests.client.test_optuna_proxy import user_env
from tests.conftest import ROOT, free_port
from tests.node.helpers import FAST

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.timeout(400),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium (Debian's package) is not installed; .ci/run installs it"),
]

TOKEN = "dashboard-admin-token"
#: Time the page's scripts get to fetch the study and render it (Chromium's virtual time: it
#: ends early once the page is idle).
BUDGET_MS = "20000"


def _dashboard(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "nexus_client.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=user_env())


def _chromium(*args: str, cwd) -> str:
    out = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                          f"--user-data-dir={cwd}/chromium-profile", f"--virtual-time-budget={BUDGET_MS}", *args],
                         capture_output=True, text=True, timeout=120, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _text(dom: str) -> str:
    """The page's visible words, tags and scripts left out."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.fixture
def tokened_node(node_factory, tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    return node_factory("dash", "--no-mdns", "--slots", "1", "--token-file", str(token)).start()


@pytest.fixture
def finished_job(tokened_node, insurance_csv, tmp_path):
    node = tokened_node
    with NexusClient(node.address, token=TOKEN, tls_ca="") as client:
        job = client.submit(insurance_csv, "charges", use_case="price health insurance", max_trials=5, seed=1,
                            constraints=json.loads(FAST))
        job = client.wait(job.job_id)
        assert job.state == pb.COMPLETED, job.message
        trials = client.list_trials(job.job_id)
        assert len(trials) == 5 and {t.state for t in trials} == {"COMPLETE"}
        viewer = tmp_path / "viewer-token"
        viewer.write_text(client.create_token("viewer", "read").secret + "\n")
    return node, job, trials, viewer


def test_the_dashboard_shows_the_jobs_study_and_its_trials_in_a_browser(finished_job, tmp_path):
    node, job, trials, viewer = finished_job
    proc = _dashboard("--connect", node.address, "--token-file", str(viewer), "dashboard", job.job_id, "--port", "0")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        # The URL is printed once the server listens; reading it is the synchronisation.
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/dashboard/studies/\d+", url), \
            url or proc.communicate(timeout=30)[1]
        about = proc.stderr.readline()
        assert about.startswith(f"job {job.job_id}: insurance.csv -> charges, COMPLETED") and \
            f"study {job.study_name}" in about, about

        # The list of studies names the job's; the study's trial list counts its trials.
        home = _text(_chromium("--dump-dom", url.rsplit("/dashboard/", 1)[0] + "/dashboard", cwd=tmp_path))
        assert job.study_name in home
        listed = _text(_chromium("--dump-dom", url + "/trials", cwd=tmp_path))
        assert f"{job.study_name} (id={url.rsplit('/', 1)[1]})" in listed
        assert f" {len(trials)} Trials " in listed
        for t in trials:
            assert f" Trial {t.number} Complete " in listed

        # The study's page, as the command's link opens it: the README's screenshot.
        shot = tmp_path / "dashboard.png"
        _chromium(f"--screenshot={shot}", "--window-size=1280,800", "--hide-scrollbars", url, cwd=tmp_path)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        if os.environ.get("NEXUS_SAVE_SCREENSHOTS") == "1":
            shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_dashboard_says_why_the_node_refuses_it_and_serves_nothing(tokened_node, tmp_path):
    node = tokened_node
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token\n")
    refused = _dashboard("--connect", node.address, "--token-file", str(wrong), "dashboard", "--port", "0")
    out, err = refused.communicate(timeout=60)
    assert refused.returncode == cli.EXIT_USAGE and out == "" and "UNAUTHENTICATED" in err

    nobody = f"127.0.0.1:{free_port()}"
    unreachable = _dashboard("--connect", nobody, "--token-file", str(wrong), "dashboard", "--port", "0")
    out, err = unreachable.communicate(timeout=60)
    assert unreachable.returncode == cli.EXIT_RPC and out == ""
    assert f"is a node running at {nobody}?" in err
