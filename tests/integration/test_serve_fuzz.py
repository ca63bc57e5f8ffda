"""schemathesis against the served /openapi.json: generated and mutated requests to every /v1
operation (a bounded number each) never get a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

KEY = "sk-fuzz"

pytestmark = pytest.mark.server


@pytest.mark.timeout(600)
def test_no_server_errors_on_generated_requests(start_server, tmp_path):
    server = start_server(api_key=KEY, extra_args=("--no-worker",))
    schemathesis = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--include-path-regex",
            "^/v1/",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--workers",
            "1",
            "--request-timeout",
            "120",
            "--header",
            f"Authorization: Bearer {KEY}",
            "--no-shrink",
            "--suppress-health-check",
            "all",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-2000:]}\nserver log:\n{server.log_tail()}"
