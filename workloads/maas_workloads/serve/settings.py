"""Settings of the model server: its own flags, the LLM engine's (`llm.settings`) and the
shared HTTP layer's (`http.settings`).

Every flag defaults to the `MAAS_*` variable the operator sets; see the README's table.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import get_args

from maas_workloads import contract
from maas_workloads.artifact import VariantName
from maas_workloads.serve.http.settings import (
    HTTP_FLAGS,
    Flag,
    HttpSettings,
    Options,
    SettingsError,
    argument_parser,
    http_settings,
)
from maas_workloads.serve.llm import settings as llm_settings
from maas_workloads.serve.sources import model_name_of

__all__ = ["Settings", "SettingsError", "parse"]


@dataclass(frozen=True)
class Settings:
    model_uri: str
    model_name: str
    model_version: str
    model_sha256: str | None
    model_variant: str | None
    """The artifact's optimized variant to serve (int8, fp16, bf16, onnx); None: the full model."""
    max_batch_size: int
    max_delay_ms: float
    max_queue_size: int
    timeout_seconds: float
    device: str
    cache_dir: pathlib.Path
    llm: llm_settings.LLMSettings
    """The engine's settings when the artifact is a causal LM (OpenAI API)."""
    http: HttpSettings


_FLAGS: tuple[Flag, ...] = (
    Flag("--model", contract.ENV_MODEL_URI, "artifact directory or URI: path, file://, pvc://claim/path, http(s)://"),
    Flag(
        "--model-name", contract.ENV_MODEL_NAME, "name served under /v2/models/<name> (default: the URI's last segment)"
    ),
    Flag("--model-version", contract.ENV_MODEL_VERSION, "version reported and accepted (default: 1)"),
    Flag("--model-sha256", contract.ENV_MODEL_SHA256, "pin the sha256 of the artifact's manifest.json"),
    Flag(
        "--variant",
        contract.ENV_MODEL_VARIANT,
        f"serve this optimized variant of the artifact: {', '.join(get_args(VariantName))} (default: the full model)",
    ),
    Flag(
        "--max-batch-size", contract.ENV_MAX_BATCH_SIZE, f"rows per batch (default: {contract.DEFAULT_MAX_BATCH_SIZE})"
    ),
    Flag(
        "--max-delay-ms",
        contract.ENV_MAX_DELAY_MS,
        f"longest wait to fill a batch (default: {contract.DEFAULT_MAX_DELAY_MS})",
    ),
    Flag(
        "--max-queue-size",
        contract.ENV_MAX_QUEUE_SIZE,
        f"queued requests before 429 (default: {contract.DEFAULT_MAX_QUEUE_SIZE})",
    ),
    Flag(
        "--timeout-seconds",
        contract.ENV_TIMEOUT_SECONDS,
        f"default request deadline (default: {contract.DEFAULT_TIMEOUT_SECONDS})",
    ),
    Flag("--device", contract.ENV_DEVICE, "auto, cpu, cuda or cuda:<n> (default: auto)"),
    Flag(
        "--cache-dir", contract.ENV_MODEL_CACHE_DIR, "where remote models are fetched (default: a temporary directory)"
    ),
)


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags and the environment; raises SettingsError naming the flag and variable."""
    environ = os.environ if environ is None else environ
    flags = (*_FLAGS, *HTTP_FLAGS)
    parser = argument_parser(
        environ,
        prog="python -m maas_workloads.serve",
        description="Serve a model artifact: tensor models over the Open Inference Protocol (v2) and KServe v1, "
        "causal language models over the OpenAI API.",
        flags=flags,
    )
    llm_settings.add_arguments(parser, environ)
    values = vars(parser.parse_args(argv))
    options = Options(values, flags)
    model_uri = options.text("model")
    if model_uri is None:
        raise SettingsError(f"no model: pass --model or set {contract.ENV_MODEL_URI}")
    sha256 = options.text("model_sha256")
    if sha256 is not None and (len(sha256) != 64 or not all(c in "0123456789abcdefABCDEF" for c in sha256)):
        raise SettingsError(f"{_FLAGS[3]} must be 64 hex digits, got {sha256!r}")
    variant = options.text("variant")
    if variant is not None and variant not in get_args(VariantName):
        raise SettingsError(f"{_FLAGS[4]} must be one of {', '.join(get_args(VariantName))}, got {variant!r}")
    cache_dir = options.text("cache_dir")
    return Settings(
        model_uri=model_uri,
        model_name=options.text("model_name") or model_name_of(model_uri),
        model_version=options.text("model_version") or "1",
        model_sha256=sha256,
        model_variant=variant,
        max_batch_size=options.number("max_batch_size", int, contract.DEFAULT_MAX_BATCH_SIZE, 1),
        max_delay_ms=options.number("max_delay_ms", float, contract.DEFAULT_MAX_DELAY_MS, 0.0),
        max_queue_size=options.number("max_queue_size", int, contract.DEFAULT_MAX_QUEUE_SIZE, 1),
        timeout_seconds=options.number("timeout_seconds", float, contract.DEFAULT_TIMEOUT_SECONDS, 0.001),
        device=options.text("device") or "auto",
        cache_dir=pathlib.Path(cache_dir) if cache_dir else pathlib.Path(tempfile.gettempdir()) / "maas-models",
        llm=_llm(values),
        http=http_settings(options, environ),
    )


def _llm(values: Mapping[str, object]) -> llm_settings.LLMSettings:
    try:
        return llm_settings.from_values(values)
    except llm_settings.LLMSettingsError as error:
        raise SettingsError(str(error)) from None
