"""The real server on a tiny Llama, called with the official `openai` client (and raw HTTP for SSE)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import openai
import pytest

from tests.workloads.llm.conftest import ENGINE, MODEL, TOKEN, builtin_only
from tests.workloads.serve.conftest import Server

pytestmark = pytest.mark.slow
CHAT = [{"role": "user", "content": "the model serve the cluster"}]


def client(server: Server, key: str | None = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "none", max_retries=0, timeout=60)


def aclient(server: Server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


def test_models_health_and_metrics_names(llm_server: Server) -> None:
    models = client(llm_server).models.list()
    assert [model.id for model in models.data] == [MODEL]
    assert httpx.get(f"{llm_server.url}/health", timeout=5).status_code == 200  # no token for probes
    text = httpx.get(f"{llm_server.url}/metrics", timeout=5).text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        *(["maas_inference_inflight_requests"] if ENGINE == "builtin" else []),
    ):
        assert re.search(rf'^{re.escape(name)}{{[^}}]*model(_name)?="{MODEL}"', text, re.MULTILINE), name


def test_chat_and_completion_with_usage_and_length(llm_server: Server) -> None:
    api = client(llm_server)
    chat = api.chat.completions.create(model=MODEL, messages=CHAT, max_completion_tokens=7, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 7
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + 7
    text = api.completions.create(model=MODEL, prompt="the queue", max_tokens=5, temperature=0)
    assert text.object == "text_completion" and text.choices[0].finish_reason == "length"
    assert text.usage is not None and text.usage.completion_tokens == 5 and text.usage.prompt_tokens > 0


def test_streams_equal_the_whole_answer_and_end_with_done(llm_server: Server) -> None:
    api = client(llm_server)
    whole = api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, seed=5, temperature=0.9)
    chunks = list(
        api.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=12,
            seed=5,
            temperature=0.9,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12
    raw = httpx.post(
        f"{llm_server.url}/v1/completions",
        json={"model": MODEL, "prompt": "the pod", "max_tokens": 4, "stream": True},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n")


def test_same_seed_same_text_other_seed_other_text(llm_server: Server) -> None:
    api = client(llm_server)

    def sample(seed: int) -> str:
        answer = api.completions.create(model=MODEL, prompt="the", max_tokens=24, seed=seed, temperature=1.0)
        return answer.choices[0].text

    assert sample(11) == sample(11)
    assert len({sample(11), sample(12), sample(13)}) > 1


def test_stop_string_ends_with_stop(llm_server: Server) -> None:
    api = client(llm_server)
    full = api.completions.create(model=MODEL, prompt="the", max_tokens=40, seed=3, temperature=1.0).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full[: full.index(stop)]
    answer = api.completions.create(model=MODEL, prompt="the", max_tokens=40, seed=3, temperature=1.0, stop=[stop])
    assert answer.choices[0].text == cut and answer.choices[0].finish_reason == "stop"
    streamed = api.completions.create(
        model=MODEL, prompt="the", max_tokens=40, seed=3, temperature=1.0, stop=stop, stream=True
    )
    chunks = list(streamed)
    assert "".join(chunk.choices[0].text for chunk in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_choices(llm_server: Server) -> None:
    answer = client(llm_server).completions.create(
        model=MODEL, prompt="the", max_tokens=8, n=3, seed=1, temperature=1.0
    )
    assert sorted(choice.index for choice in answer.choices) == [0, 1, 2]
    assert answer.usage is not None and answer.usage.completion_tokens == 24


@builtin_only
def test_errors_in_openai_shape(llm_server: Server) -> None:
    api = client(llm_server)
    with pytest.raises(openai.BadRequestError) as too_long:
        api.completions.create(model=MODEL, prompt="the cluster " * 200, max_tokens=10)
    assert re.search(
        r"maximum context length is 256 tokens.*\((\d+) in the prompt, 10 in the completion\)", too_long.value.message
    )
    body: Any = too_long.value.body
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="other-model", prompt="x")
    with pytest.raises(openai.AuthenticationError):
        client(llm_server, key="wrong").completions.create(model=MODEL, prompt="x")
    with pytest.raises(openai.BadRequestError, match="frequency_penalty"):
        api.completions.create(model=MODEL, prompt="x", frequency_penalty=0.5)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        api.completions.create(model=MODEL, prompt="x", temperature=3)


async def _answer(api: openai.AsyncOpenAI, kind: str, seed: int | None, stream: bool) -> tuple[str, str | None]:
    temperature = 0 if seed is None else 1.0
    if kind == "chat":
        if stream:
            chunks = await api.chat.completions.create(
                model=MODEL, messages=CHAT, max_tokens=16, seed=seed, temperature=temperature, stream=True
            )
            parts, reason = [], None
            async for chunk in chunks:
                parts.append(chunk.choices[0].delta.content or "")
                reason = chunk.choices[0].finish_reason or reason
            return "".join(parts), reason
        answer = await api.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=16, seed=seed, temperature=temperature
        )
        return answer.choices[0].message.content or "", answer.choices[0].finish_reason
    if stream:
        chunks = await api.completions.create(
            model=MODEL, prompt="the pod", max_tokens=16, seed=seed, temperature=temperature, stream=True
        )
        parts, reason = [], None
        async for chunk in chunks:
            parts.append(chunk.choices[0].text)
            reason = chunk.choices[0].finish_reason or reason
        return "".join(parts), reason
    answer = await api.completions.create(
        model=MODEL, prompt="the pod", max_tokens=16, seed=seed, temperature=temperature
    )
    return answer.choices[0].text, answer.choices[0].finish_reason


async def test_32_concurrent_mixed_streams_each_equal_their_lone_run(llm_server: Server) -> None:
    api = aclient(llm_server)
    cases = [(("chat", "text")[i % 2], None if i % 3 == 0 else 100 + i, i % 4 != 0) for i in range(32)]
    alone = [await _answer(api, *case) for case in cases]
    together = await asyncio.gather(*(_answer(api, *case) for case in cases))
    assert list(together) == alone
    assert metric(llm_server, "vllm:num_requests_running") == 0


async def test_disconnect_cancels_the_generation_and_frees_the_slot(llm_server: Server) -> None:
    before = metric(llm_server, "vllm:generation_tokens_total")
    async with httpx.AsyncClient(timeout=30) as http:
        request = {"model": MODEL, "prompt": "the", "max_tokens": 200, "stream": True, "seed": 1}
        async with http.stream(
            "POST", f"{llm_server.url}/v1/completions", json=request, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response:
            lines = response.aiter_lines()
            while not (await anext(lines)).startswith("data: {"):
                pass
            assert metric(llm_server, "vllm:num_requests_running") == 1
    deadline = time.monotonic() + 30
    while metric(llm_server, "vllm:num_requests_running") != 0 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert metric(llm_server, "vllm:num_requests_running") == 0
    assert metric(llm_server, "vllm:kv_cache_usage_perc") == 0
    assert metric(llm_server, "vllm:generation_tokens_total") - before < 200  # it stopped early
