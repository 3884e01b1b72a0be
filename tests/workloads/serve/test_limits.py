"""Back-pressure and deadlines on a model slow enough for requests to pile up."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator

import httpx
import pytest

from tests.workloads.serve.conftest import Server

pytestmark = pytest.mark.slow
REQUEST = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="module")
def slow_server(slow_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = {"MAAS_MAX_BATCH_SIZE": "1", "MAAS_MAX_QUEUE_SIZE": "2", "MAAS_TIMEOUT_SECONDS": "20"}
    server = Server(str(slow_dir), tmp_path_factory.mktemp("logs") / "slow.log", settings)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


async def test_full_queue_answers_429_at_once_and_the_rest_succeed(slow_server: Server) -> None:
    async with httpx.AsyncClient(base_url=slow_server.url, timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/v2/models/slow/infer", json=REQUEST) for _ in range(12)))
        metrics = (await client.get("/metrics")).text
    codes = sorted(response.status_code for response in responses)
    assert set(codes) == {200, 429}, codes
    refused = next(response for response in responses if response.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.json()["error"]
    assert 'maas_inference_requests_total{code="429",model="slow",protocol="v2"}' in metrics


async def test_deadline_from_the_request_answers_504(slow_server: Server) -> None:
    async with httpx.AsyncClient(base_url=slow_server.url, timeout=60) as client:
        # One request occupies the model; the next asks for a result within 1 ms.
        busy = asyncio.ensure_future(client.post("/v2/models/slow/infer", json=REQUEST))
        await asyncio.sleep(0.05)
        hurried = await client.post("/v2/models/slow/infer", json={**REQUEST, "parameters": {"timeout": 1000}})
        assert hurried.status_code == 504
        assert "deadline" in hurried.json()["error"]
        assert (await busy).status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 200
