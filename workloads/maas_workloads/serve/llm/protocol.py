"""OpenAI request bodies (completions, chat completions) and what the engine makes of them.

Field names, defaults and ranges are OpenAI's API reference; `top_k` is vLLM's extension.
A parameter this server cannot honour is refused with 400 naming it, never ignored: a
silently dropped `logprobs` or `frequency_penalty` would be a plausible wrong answer.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from maas_workloads.serve.llm.errors import OpenAIError

MAX_STOP_STRINGS: Final = 16
# Accepted only with the value that means "off" (OpenAI's defaults).
_NEUTRAL: Final[dict[str, tuple[Any, ...] | None]] = {
    "echo": (False, None),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "best_of": (None, 1),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, True, False),
    "response_format": (None, {"type": "text"}),
    "user": None,  # any value: it only identifies the caller
    "metadata": None,
    "store": (None, False),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    """vLLM's extension: -1 or 0 keep every token."""
    n: int = Field(default=1, ge=1, le=64)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="after")
    def _check(self) -> _Request:
        for name, value in (self.model_extra or {}).items():
            if name not in _NEUTRAL:
                raise ValueError(f"unknown parameter {name!r}")
            allowed = _NEUTRAL[name]
            if allowed is not None and value not in allowed:
                raise ValueError(f"parameter {name!r} is not supported by this server; leave it out")
        if len(self.stop_strings) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class CompletionRequest(_Request):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise OpenAIError(400, "prompt must not be empty", param="prompt")
        if all(isinstance(item, int) for item in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Request):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def requested_max_tokens(self) -> int | None:
        # max_completion_tokens replaced max_tokens in OpenAI's API; when both are given it wins.
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def conversation(self) -> list[dict[str, str]]:
        """The messages as chat templates expect them ("developer" is OpenAI's new name for "system")."""
        return [
            {"role": "system" if message.role == "developer" else message.role, "content": message.text()}
            for message in self.messages
        ]


RequestT = TypeVar("RequestT", CompletionRequest, ChatCompletionRequest)


def parse(kind: type[RequestT], body: bytes) -> RequestT:
    """The request, or OpenAIError 400 naming the first offending parameter."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise OpenAIError(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise OpenAIError(400, "the body must be a JSON object")
    try:
        return kind.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise OpenAIError(400, f"{param}: {message}" if param else message, param=param) from None
