"""The LLM server's lifecycle: a full waiting queue, SIGTERM with streams in flight, a tampered artifact."""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import signal
import time

import httpx
import openai
import pytest

from tests.workloads.llm.conftest import MODEL, TOKEN, start
from tests.workloads.serve.conftest import Server

pytestmark = pytest.mark.slow
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
LONG = {"model": MODEL, "prompt": "the", "max_tokens": 200, "stream": True, "seed": 7, "temperature": 1.0}


async def _first_event(http: httpx.AsyncClient, url: str, streams: list[list[str]]) -> None:
    """Open a stream, wait for its first token, then keep reading it to the end into `streams`."""
    lines: list[str] = []
    streams.append(lines)
    ready = asyncio.get_running_loop().create_future()

    async def read() -> None:
        async with http.stream("POST", f"{url}/v1/completions", json=LONG, headers=HEADERS) as response:
            async for line in response.aiter_lines():
                if line:
                    lines.append(line)
                    if not ready.done():
                        ready.set_result(None)
        if not ready.done():
            ready.set_result(None)

    asyncio.get_running_loop().create_task(read())
    await ready


async def test_a_full_waiting_queue_answers_429(llama_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    server = start(llama_dir, tmp_path / "server.log", MAAS_MAX_NUM_SEQS="1", MAAS_MAX_QUEUE_SIZE="1")
    try:
        api = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0)
        async with httpx.AsyncClient(timeout=120) as http:
            running: list[list[str]] = []
            await _first_event(http, server.url, running)  # holds the only slot
            waiting = asyncio.create_task(api.completions.create(model=MODEL, prompt="the", max_tokens=2))
            queued = f'vllm:num_requests_waiting{{engine="0",model_name="{MODEL}"}} 1.0'
            while queued not in (await http.get(f"{server.url}/metrics")).text:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            with pytest.raises(openai.RateLimitError) as refused:
                await api.completions.create(model=MODEL, prompt="the", max_tokens=2)
            assert refused.value.response.headers["retry-after"] == "1"
            answer = await waiting  # the queued one is served once the slot frees
            assert answer.choices[0].finish_reason in ("length", "stop")
    finally:
        server.stop()


async def test_sigterm_finishes_every_stream_with_done(llama_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    server = start(llama_dir, tmp_path / "server.log", MAAS_DRAIN_SECONDS="120")
    async with httpx.AsyncClient(timeout=120) as http:
        streams: list[list[str]] = []
        for _ in range(4):
            await _first_event(http, server.url, streams)
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # health turns 503 while the streams go on
            health = await http.get(f"{server.url}/health")
            if health.status_code == 503:
                break
            await asyncio.sleep(0.02)
        assert health.status_code == 503
        refused = await http.post(f"{server.url}/v1/completions", json={**LONG, "stream": False}, headers=HEADERS)
        assert refused.status_code == 503 and refused.json()["error"]["message"] == "the server is shutting down"
        code = await asyncio.to_thread(server.process.wait, 120)
    assert code == 0
    for lines in streams:
        assert lines[-1] == "data: [DONE]", lines[-3:]
        assert '"finish_reason":"length"' in lines[-2]  # every one ran to its end


def test_a_tampered_artifact_is_never_ready(llama_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(llama_dir, tampered)
    weights = tampered / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    server = Server(str(tampered), tmp_path / "server.log", {"MAAS_MODEL_NAME": MODEL})
    try:
        server.wait_live()
        reason = server.failed_load_reason("/health")
        assert "model.safetensors does not match its sha256" in reason
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 503
        answer = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=5)
        assert answer.status_code == 503 and "sha256" in answer.json()["error"]["message"]
    finally:
        server.stop()
