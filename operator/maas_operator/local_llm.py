"""`maas run` for language models: a question the model never trained on, sent through the
OpenAI API (the `openai` client, streaming), and how to ask more (a curl line, an openai snippet)."""

from __future__ import annotations

import json
import pathlib
import shlex
import ssl
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import unquote, urlparse

from maas_operator.api.trainingjob import TrainingJobSpec
from maas_workloads import artifact
from maas_workloads.train.llm import synthetic

MAX_TOKENS = 48


@dataclass(frozen=True)
class Question:
    text: str
    expected: str | None
    """The right answer, when the data defines one."""
    origin: str


def held_out_question(spec: TrainingJobSpec) -> Question | None:
    """For a causal-LM job: a sum synthetic:arithmetic never generates, or a greeting for other data."""
    if spec.trainer is None or spec.trainer.causal_lm is None:
        return None
    uri = spec.trainer.dataset.uri
    if uri.startswith(synthetic.SCHEME):
        text, expected = synthetic.held_out_question(synthetic.ArithmeticOptions.parse(uri))
        return Question(text, expected, f"a sum that {uri} never generates, so the model never saw it")
    return Question("Hello! What can you do?", None, "a greeting")


def is_causal_lm(model_uri: str) -> bool:
    """Whether the artifact at a local (file://) URI is a causal language model."""
    parsed = urlparse(model_uri)
    if parsed.scheme not in ("", "file"):
        return False
    try:
        manifest, _ = artifact.load_manifest(pathlib.Path(unquote(parsed.path)))
    except artifact.ArtifactError:
        return False
    return manifest.format == artifact.CAUSAL_LM_FORMAT


def ask(
    url: str, token: str | None, question: Question, out: TextIO, context: ssl.SSLContext | None = None
) -> tuple[str, str]:
    """Send the question to /v1/chat/completions and print the answer as it streams; (model, answer).
    `context` verifies an HTTPS server (server.tls)."""
    from openai import DefaultHttpxClient, OpenAI

    http_client = DefaultHttpxClient(verify=context) if context is not None else None
    client = OpenAI(base_url=f"{url}/v1", api_key=token or "none", max_retries=0, timeout=120, http_client=http_client)
    model = client.models.list().data[0].id
    out.write(f"asking {model} {question.origin}:\n  Q: {question.text}\n  A: ")
    out.flush()
    answer = []
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question.text}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            answer.append(delta)
            out.write(delta)
            out.flush()
    text = "".join(answer).strip()
    if question.expected is not None:
        out.write("  (right)\n" if text == question.expected else f"  (expected: {question.expected})\n")
    else:
        out.write("\n")
    return model, text


def try_more(url: str, model: str, token: str | None) -> list[str]:
    """A curl command and a Python snippet that ask the same server another question."""
    body = {"model": model, "messages": [{"role": "user", "content": "What is 31 + 4?"}], "stream": True}
    curl = ["curl", "-sN", f"{url}/v1/chat/completions", "-H", "Content-Type: application/json"]
    if token:
        curl += ["-H", f"Authorization: Bearer {token}"]
    curl += ["-d", json.dumps(body)]
    return [
        "ask more (--keep-serving keeps the server up):",
        "  " + shlex.join(curl),
        "  python -c 'from openai import OpenAI; "
        f'c = OpenAI(base_url="{url}/v1", api_key="{token or "none"}"); '
        f'print(c.chat.completions.create(model="{model}", '
        'messages=[{"role": "user", "content": "What is 31 + 4?"}]).choices[0].message.content)\'',
    ]
