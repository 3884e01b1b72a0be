"""The shared HTTP layer serves any ASGI application with the same guarantees: a second
application (`other_app`, shaped like the LLM server) gets them without a line of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.workloads.serve import raw
from tests.workloads.serve.conftest import ROOT, free_port

pytestmark = pytest.mark.slow
TOKEN = "other-token"


def test_a_second_application_gets_the_guards_by_construction() -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "workloads"), str(ROOT)]),
        "MAAS_HOST": "127.0.0.1",
        "MAAS_PORT": str(port),
        "MAAS_AUTH_TOKEN": TOKEN,
        "MAAS_MAX_HEADER_BYTES": "4096",
        "MAAS_DRAIN_DELAY_SECONDS": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.workloads.serve.other_app"], cwd=ROOT, env=env, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert raw.get(port, "/health").status == 200  # public: no token
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            refused = client.post("/v1/completions", content=b"{}")
            assert refused.status_code == 401
            assert refused.json()["error"]["message"].startswith("missing or wrong bearer token")  # the app's shape
            auth = {"authorization": f"Bearer {TOKEN}"}
            too_long = client.get("/v1/models", headers={**auth, "x-pad": "p" * 5000})
            assert too_long.status_code == 431
            assert "exceed 4096 bytes" in too_long.json()["error"]["message"]

            def pieces() -> object:  # a chunked upload in several writes
                for _ in range(5):
                    yield b"x" * 1000

            echoed = client.post("/v1/completions", content=pieces(), headers=auth)
            assert echoed.json() == {"messages": 1, "bytes": 5000}  # one complete body, never a partial one

            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert raw.get(port, "/health").status == 503  # the app's begin_drain ran
            during = client.post("/v1/completions", content=b"{}", headers=auth)
            assert during.status_code == 200
            assert during.headers["connection"] == "close"
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = process.stderr.read().decode() if process.stderr else ""
    assert '"message":"draining"' in log and '"message":"drained"' in log
    assert TOKEN not in log
