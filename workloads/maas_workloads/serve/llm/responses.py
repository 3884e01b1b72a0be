"""OpenAI response bodies: completions and chat completions, whole or as stream chunks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from maas_workloads.serve.llm.generation import Event, Usage
from maas_workloads.serve.settings import Settings


def server_version() -> str:
    try:
        return metadata.version("maas-operator")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def models(settings: Settings, max_model_len: int | None) -> dict[str, Any]:
    """GET /v1/models: the one served model, with vLLM's `root` and `max_model_len` fields."""
    card: dict[str, Any] = {
        "id": settings.model_name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "maas",
        "root": settings.model_uri,
        "parent": None,
    }
    if max_model_len is not None:
        card["max_model_len"] = max_model_len
    return {"object": "list", "data": [card]}


@dataclass
class Shape:
    """The envelope of one response: chat or text completion, its id, model and creation time."""

    chat: bool
    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def complete(
        self, texts: dict[int, list[str]], finished: dict[int, tuple[str, str | None]], usage: Usage
    ) -> dict[str, Any]:
        choices = []
        for index in sorted(finished):
            text = "".join(texts.get(index, []))
            reason, stop_reason = finished[index]
            choice: dict[str, Any] = {"index": index}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choice |= {"logprobs": None, "finish_reason": reason, "stop_reason": stop_reason}
            choices.append(choice)
        return {**self._envelope(chunk=False), "choices": choices, "usage": usage.document()}

    def opening(self, choices: int, usage: bool) -> list[dict[str, Any]]:
        """Chat streams start with each choice's role, as OpenAI's do; text completions have no opening."""
        if not self.chat:
            return []
        return [
            self._chunk({"index": index, "delta": {"role": "assistant", "content": ""}}, usage)
            for index in range(choices)
        ]

    def chunk(self, event: Event, usage: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": event.index}
        if self.chat:
            choice["delta"] = {"content": event.text} if event.text else {}
        else:
            choice["text"] = event.text
        choice |= {"logprobs": None, "finish_reason": event.finish_reason}
        if event.finish_reason is not None:
            choice["stop_reason"] = event.stop_reason
        return self._chunk(choice, usage)

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        """The last chunk when `stream_options.include_usage`: no choices, the request's usage."""
        return {**self._envelope(chunk=True), "choices": [], "usage": usage.document()}

    def _chunk(self, choice: dict[str, Any], usage: bool) -> dict[str, Any]:
        document = {**self._envelope(chunk=True), "choices": [choice]}
        if usage:
            document["usage"] = None  # OpenAI: every chunk carries usage (null) once include_usage is asked for
        return document
