"""Startup errors and the drain on SIGTERM under continuous load."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.workloads.serve.conftest import ROOT, Server

pytestmark = pytest.mark.slow
REQUEST = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": [1.0] * 128}]}


def test_bad_setting_exits_64_naming_it(digits_dir: pathlib.Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "workloads"),
        "MAAS_MODEL_URI": str(digits_dir),
        "MAAS_MAX_BATCH_SIZE": "0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "maas_workloads.serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 64
    assert "--max-batch-size (MAAS_MAX_BATCH_SIZE) must be at least 1" in result.stderr


async def test_sigterm_drains_every_accepted_request(digits_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    settings = {"MAAS_MAX_DELAY_MS": "20", "MAAS_DRAIN_DELAY_SECONDS": "1", "MAAS_DRAIN_SECONDS": "20"}
    server = Server(str(digits_dir), tmp_path / "drain.log", settings)
    server.wait_ready()
    outcomes: list[tuple[float, int | str]] = []
    signalled = asyncio.Event()

    async def caller(client: httpx.AsyncClient) -> None:
        while server.process.poll() is None:
            sent = time.monotonic()
            try:
                response = await client.post("/v2/models/digits/infer", json=REQUEST)
                outcomes.append((sent, response.status_code))
            except httpx.TransportError as error:
                outcomes.append((sent, type(error).__name__))
                if signalled.is_set():
                    return
                await asyncio.sleep(0.01)

    async with (
        httpx.AsyncClient(base_url=server.url, timeout=60) as client,
        httpx.AsyncClient(base_url=server.url) as probe,
    ):
        callers = [asyncio.ensure_future(caller(client)) for _ in range(6)]
        await asyncio.sleep(1.5)
        signal_time = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        signalled.set()
        await asyncio.sleep(0.3)
        readiness = await probe.get("/v2/health/ready")
        assert readiness.status_code == 503
        assert readiness.json() == {"ready": False, "reason": "the server is shutting down"}
        await asyncio.wait_for(asyncio.gather(*callers), timeout=60)
    assert await asyncio.to_thread(server.process.wait, 60) == 0, server.log()
    server.stop()

    before = [outcome for sent, outcome in outcomes if sent < signal_time]
    after = [outcome for sent, outcome in outcomes if sent >= signal_time]
    assert len(before) > 20
    assert [outcome for outcome in before if outcome != 200] == []
    assert 200 in after, "requests kept being answered during the drain delay"
    assert "draining" in server.log()
