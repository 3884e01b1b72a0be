"""Server settings: command-line flags, each defaulting to the MAAS_* variable the operator sets."""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from maas_workloads import contract
from maas_workloads.serve.llm import settings as llm_settings
from maas_workloads.serve.sources import model_name_of

_Number = TypeVar("_Number", int, float)


class SettingsError(Exception):
    """A flag or environment variable has a value the server cannot use."""


@dataclass(frozen=True)
class Settings:
    model_uri: str
    model_name: str
    model_version: str
    model_sha256: str | None
    host: str
    port: int
    max_batch_size: int
    max_delay_ms: float
    max_queue_size: int
    timeout_seconds: float
    max_request_bytes: int
    auth_token: str | None
    device: str
    log_level: str
    access_log: bool
    drain_seconds: float
    drain_delay_seconds: float
    cache_dir: pathlib.Path
    llm: llm_settings.LLMSettings
    """The engine's settings when the artifact is a causal LM (OpenAI API)."""


_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--model", contract.ENV_MODEL_URI, "artifact directory or URI: path, file://, pvc://claim/path, http(s)://"),
    ("--model-name", contract.ENV_MODEL_NAME, "name served under /v2/models/<name> (default: the URI's last segment)"),
    ("--model-version", contract.ENV_MODEL_VERSION, "version reported and accepted (default: 1)"),
    ("--model-sha256", contract.ENV_MODEL_SHA256, "pin the sha256 of the artifact's manifest.json"),
    ("--host", contract.ENV_HOST, "address to listen on (default: 0.0.0.0)"),
    ("--port", contract.ENV_PORT, f"port to listen on (default: {contract.SERVING_PORT})"),
    ("--max-batch-size", contract.ENV_MAX_BATCH_SIZE, f"rows per batch (default: {contract.DEFAULT_MAX_BATCH_SIZE})"),
    (
        "--max-delay-ms",
        contract.ENV_MAX_DELAY_MS,
        f"longest wait to fill a batch (default: {contract.DEFAULT_MAX_DELAY_MS})",
    ),
    (
        "--max-queue-size",
        contract.ENV_MAX_QUEUE_SIZE,
        f"queued requests before 429 (default: {contract.DEFAULT_MAX_QUEUE_SIZE})",
    ),
    (
        "--timeout-seconds",
        contract.ENV_TIMEOUT_SECONDS,
        f"default request deadline (default: {contract.DEFAULT_TIMEOUT_SECONDS})",
    ),
    (
        "--max-request-bytes",
        contract.ENV_MAX_REQUEST_BYTES,
        f"largest body (default: {contract.DEFAULT_MAX_REQUEST_BYTES})",
    ),
    ("--device", contract.ENV_DEVICE, "auto, cpu, cuda or cuda:<n> (default: auto)"),
    ("--log-level", contract.ENV_LOG_LEVEL, "debug, info, warning or error (default: info)"),
    ("--access-log", contract.ENV_ACCESS_LOG, "true or false: a JSON line per request (default: true)"),
    (
        "--drain-seconds",
        contract.ENV_DRAIN_SECONDS,
        f"bound on the drain after SIGTERM (default: {contract.DEFAULT_DRAIN_SECONDS})",
    ),
    (
        "--drain-delay-seconds",
        contract.ENV_DRAIN_DELAY_SECONDS,
        f"keep serving after SIGTERM (default: {contract.DEFAULT_DRAIN_DELAY_SECONDS})",
    ),
    ("--cache-dir", contract.ENV_MODEL_CACHE_DIR, "where remote models are fetched (default: a temporary directory)"),
)


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m maas_workloads.serve",
        description="Serve a model artifact: tensor models over the Open Inference Protocol (v2) and KServe v1, "
        "causal language models over the OpenAI API.",
    )
    for flag, variable, help_text in _FLAGS:
        parser.add_argument(flag, default=environ.get(variable), help=f"{help_text} [env {variable}]")
    llm_settings.add_arguments(parser, environ)
    values = vars(parser.parse_args(argv))
    sources = {flag.removeprefix("--").replace("-", "_"): (flag, variable) for flag, variable, _ in _FLAGS}

    def setting(key: str) -> str | None:
        value = values[key]
        return None if value in (None, "") else str(value)

    def number(key: str, kind: type[_Number], default: _Number, minimum: _Number) -> _Number:
        raw = setting(key)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{_name(sources[key])} must be a number, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{_name(sources[key])} must be at least {minimum}, got {raw!r}")
        return value

    model_uri = setting("model")
    if model_uri is None:
        raise SettingsError(f"no model: pass --model or set {contract.ENV_MODEL_URI}")
    access_log = (setting("access_log") or "true").lower()
    if access_log not in ("true", "false", "1", "0"):
        raise SettingsError(f"{_name(sources['access_log'])} must be true or false, got {access_log!r}")
    log_level = (setting("log_level") or "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise SettingsError(f"{_name(sources['log_level'])} must be debug, info, warning or error, got {log_level!r}")
    sha256 = setting("model_sha256")
    if sha256 is not None and (len(sha256) != 64 or not all(c in "0123456789abcdefABCDEF" for c in sha256)):
        raise SettingsError(f"{_name(sources['model_sha256'])} must be 64 hex digits, got {sha256!r}")
    cache_dir = setting("cache_dir")
    return Settings(
        model_uri=model_uri,
        model_name=setting("model_name") or model_name_of(model_uri),
        model_version=setting("model_version") or "1",
        model_sha256=sha256,
        host=setting("host") or "0.0.0.0",  # a pod serves on every interface
        port=number("port", int, contract.SERVING_PORT, 0),
        max_batch_size=number("max_batch_size", int, contract.DEFAULT_MAX_BATCH_SIZE, 1),
        max_delay_ms=number("max_delay_ms", float, contract.DEFAULT_MAX_DELAY_MS, 0.0),
        max_queue_size=number("max_queue_size", int, contract.DEFAULT_MAX_QUEUE_SIZE, 1),
        timeout_seconds=number("timeout_seconds", float, contract.DEFAULT_TIMEOUT_SECONDS, 0.001),
        max_request_bytes=number("max_request_bytes", int, contract.DEFAULT_MAX_REQUEST_BYTES, 1024),
        auth_token=_auth_token(environ),
        device=setting("device") or "auto",
        log_level=log_level,
        access_log=access_log in ("true", "1"),
        drain_seconds=number("drain_seconds", float, contract.DEFAULT_DRAIN_SECONDS, 0.0),
        drain_delay_seconds=number("drain_delay_seconds", float, contract.DEFAULT_DRAIN_DELAY_SECONDS, 0.0),
        cache_dir=pathlib.Path(cache_dir) if cache_dir else pathlib.Path(tempfile.gettempdir()) / "maas-models",
        llm=_llm(values),
    )


def _llm(values: Mapping[str, object]) -> llm_settings.LLMSettings:
    try:
        return llm_settings.from_values(values)
    except llm_settings.LLMSettingsError as error:
        raise SettingsError(str(error)) from None


def _name(source: tuple[str, str]) -> str:
    flag, variable = source
    return f"{flag} ({variable})"


def _auth_token(environ: Mapping[str, str]) -> str | None:
    """The bearer token from MAAS_AUTH_TOKEN, else from the file MAAS_AUTH_TOKEN_FILE names."""
    token = environ.get(contract.ENV_AUTH_TOKEN, "").strip()
    if token:
        return token
    path = environ.get(contract.ENV_AUTH_TOKEN_FILE, "").strip()
    if not path:
        return None
    try:
        token = pathlib.Path(path).read_text().strip()
    except OSError as error:
        raise SettingsError(f"{contract.ENV_AUTH_TOKEN_FILE}={path} cannot be read: {error}") from None
    if not token:
        raise SettingsError(f"{contract.ENV_AUTH_TOKEN_FILE}={path} is empty; the server would accept no one")
    return token
