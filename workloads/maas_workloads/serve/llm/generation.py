"""One OpenAI request in the engine: prompts to sequences, tokens to text deltas, limits, metrics.

`prepare` turns a parsed request into prompt token ids and sampling parameters, checking the
context length the way vLLM words it; `Generation.events` runs every sequence of the request
(n per prompt) and yields (choice index, text, finish reason) as text becomes available.
Leaving the iteration early (client gone, server stopping) cancels what still runs in the
engine and gives the slots back at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from maas_workloads.serve.llm.admission import Slots
from maas_workloads.serve.llm.engine import Engine, SamplingParams, Sequence
from maas_workloads.serve.llm.errors import OpenAIError
from maas_workloads.serve.llm.metrics import LLMMetrics
from maas_workloads.serve.llm.protocol import ChatCompletionRequest, CompletionRequest
from maas_workloads.serve.llm.text import TextStream

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's (and vLLM's) default `max_tokens` for /v1/completions; chat defaults to the rest of the context."""


@dataclass(frozen=True, slots=True)
class Event:
    index: int
    text: str
    finish_reason: str | None = None
    stop_reason: str | None = None


@dataclass(slots=True)
class _Choice:
    index: int
    params: SamplingParams
    prompt: list[int]
    sequence: Sequence | None = None
    text: TextStream | None = None
    tokens: int = 0
    done: bool = False


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def document(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


@dataclass
class Plan:
    """What a request will run: one entry per choice, in choice order."""

    choices: list[_Choice]
    stop: list[str]
    usage: Usage = field(default_factory=Usage)


def prepare(engine: Engine, request: CompletionRequest | ChatCompletionRequest) -> Plan:
    """Tokenize, apply defaults and limits; raises OpenAIError 400 for what cannot run."""
    tokenizer = engine.tokenizer
    if isinstance(request, ChatCompletionRequest):
        if not tokenizer.chat_template:
            raise OpenAIError(400, "this model has no chat template; use /v1/completions", param="messages")
        text = tokenizer.apply_chat_template(request.conversation(), add_generation_prompt=True, tokenize=False)
        # The template already placed the special tokens it wants (vLLM tokenizes the same way).
        prompts: list[list[int]] = [tokenizer.encode(text, add_special_tokens=False)]
        where, default_max = "messages", None
    else:
        prompts = [
            list(prompt) if isinstance(prompt, list) else tokenizer.encode(prompt) for prompt in request.prompts()
        ]
        where, default_max = "prompt", COMPLETIONS_DEFAULT_MAX_TOKENS
    vocab = engine.model.config.get_text_config().vocab_size
    defaults = _sampling_defaults(engine.generation_config)
    temperature = request.temperature if request.temperature is not None else defaults.get("temperature", 1.0)
    top_p = request.top_p if request.top_p is not None else defaults.get("top_p", 1.0)
    top_k = request.top_k if request.top_k is not None else int(defaults.get("top_k", 0))
    choices: list[_Choice] = []
    usage = Usage()
    for prompt in prompts:
        if any(not 0 <= token < vocab for token in prompt):
            raise OpenAIError(400, f"the prompt has token ids outside the vocabulary [0, {vocab})", param="prompt")
        length = len(prompt)
        if length == 0:
            raise OpenAIError(400, "the prompt is empty", param=where)
        max_tokens = request.requested_max_tokens()
        if max_tokens is None:
            max_tokens = default_max or engine.max_model_len - length
        limit = engine.max_model_len
        if length >= limit or length + max_tokens > limit:
            raise OpenAIError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{length + max_tokens} tokens ({length} in the {where}, {max_tokens} in the completion). "
                f"Please reduce the length of the {where} or completion.",
                param=where if length >= limit else "max_tokens",
                code="context_length_exceeded",
            )
        usage.prompt_tokens += length
        for child in range(request.n):
            seed = None if request.seed is None else request.seed + child
            params = SamplingParams(max_tokens, float(temperature), float(top_p), max(0, top_k), seed)
            choices.append(_Choice(len(choices), params, prompt))
    return Plan(choices, request.stop_strings, usage)


def _sampling_defaults(generation_config: Any) -> dict[str, Any]:
    """The model's own sampling defaults from generation_config.json, as vLLM applies them."""
    if not getattr(generation_config, "do_sample", False):
        return {}
    diff = generation_config.to_diff_dict()
    return {key: diff[key] for key in ("temperature", "top_p", "top_k") if key in diff}


class Generation:
    """A prepared request, admitted into the engine while `events` is iterated."""

    def __init__(self, engine: Engine, slots: Slots, metrics: LLMMetrics, plan: Plan, arrived: float) -> None:
        self._engine = engine
        self._slots = slots
        self._metrics = metrics
        self.plan = plan
        self._arrived = arrived

    async def events(self) -> AsyncGenerator[Event, None]:
        choices = self.plan.choices
        await self._slots.acquire(len(choices))
        self._metrics.queue_time.observe(time.perf_counter() - self._arrived)
        self._metrics.prompt_tokens.inc(self.plan.usage.prompt_tokens)
        try:
            for choice in choices:
                choice.sequence = self._engine.submit(choice.prompt, choice.params)
                choice.text = TextStream(self._engine.tokenizer, self.plan.stop)
            if len(choices) == 1:
                async for event in self._run(choices[0]):
                    yield event
            else:
                async for event in self._merge(choices):
                    yield event
            self._metrics.e2e.observe(time.perf_counter() - self._arrived)
        finally:
            for choice in choices:
                if choice.sequence is not None and not choice.done:
                    self._engine.cancel(choice.sequence)
            self._slots.release(len(choices))

    async def _merge(self, choices: list[_Choice]) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()

        async def pump(choice: _Choice) -> None:
            try:
                async for event in self._run(choice):
                    queue.put_nowait(event)
            except Exception as error:
                queue.put_nowait(error)
            queue.put_nowait(None)

        tasks = [asyncio.create_task(pump(choice)) for choice in choices]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, choice: _Choice) -> AsyncIterator[Event]:
        assert choice.sequence is not None and choice.text is not None
        sequence, text = choice.sequence, choice.text
        last: float | None = None
        last_token = -1
        async for tokens in sequence.tokens():
            now = time.perf_counter()
            if last is None:
                self._metrics.ttft.observe(now - self._arrived)
            else:
                for _ in tokens:
                    self._metrics.itl.observe((now - last) / len(tokens))
            last = now
            choice.tokens += len(tokens)
            self.plan.usage.completion_tokens += len(tokens)
            self._metrics.generation_tokens.inc(len(tokens))
            piece = text.push(tokens)
            if text.stopped_by is not None:
                self._engine.cancel(sequence)
                choice.done = True
                self._metrics.finished("stop")
                yield Event(choice.index, piece, "stop", text.stopped_by)
                return
            if piece:
                yield Event(choice.index, piece)
            last_token = tokens[-1]
        choice.done = True
        reason = "stop" if choice.tokens and last_token in self._engine.eos_token_ids else "length"
        self._metrics.finished(reason)
        yield Event(choice.index, text.finish(), reason)
