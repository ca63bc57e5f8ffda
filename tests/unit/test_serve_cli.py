"""`tunesmith serve` refuses to expose the API beyond this machine without a key."""

from __future__ import annotations

import pytest

from tunesmith.cli import main
from tunesmith.serve.server import is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
        ("::", False),
        ("example.org", False),
    ],
)
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_a_public_bind_without_a_key_is_refused(home, monkeypatch, capsys):
    monkeypatch.delenv("TUNESMITH_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 1
    message = capsys.readouterr().err
    assert "refusing to serve on 0.0.0.0 without an API key" in message and "--api-key" in message
    assert not (home / "serve.db").exists()  # refused before anything was opened or started
