"""The base model a fine-tune starts from: found, fetched and checked against its pin.

A `file://` or `pvc://` base is read in place, and may be a plain Hugging Face directory (no
manifest.json). An `s3://` or `https://` base must be an artifact (manifest.json listing its
files, as this operator publishes them): workers fetch it whole with the inference server's
fetcher and verify every file; the head fetches only what it checks (config, tokenizer).
"""

from __future__ import annotations

import pathlib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from maas_operator.api.causallm import BaseModelSpec
from maas_workloads import artifact, contract, storage
from maas_workloads.train.errors import ConfigurationError, InfrastructureError

FIELD = "spec.trainer.causalLM.baseModel"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class BaseModel:
    """A base model on this machine's disk."""

    uri: str
    directory: pathlib.Path
    manifest_sha256: str | None
    """sha256 of its manifest.json; None for a plain Hugging Face directory."""


def _remote(uri: str) -> bool:
    return urlparse(uri).scheme in ("s3", "http", "https")


def fetch_metadata(spec: BaseModelSpec, scratch: pathlib.Path) -> BaseModel:
    """Config, tokenizer and manifest of the base model, without its weights (for the head's checks)."""
    if not _remote(spec.uri):
        return _local(spec, verify_files=False)
    read = _reader(spec.uri)
    manifest_bytes = _read(read, contract.MANIFEST_FILE, spec.uri)
    digest = _check_pin(manifest_bytes, spec)
    manifest = _parse(manifest_bytes, spec.uri)
    scratch.mkdir(parents=True, exist_ok=True)
    for name in manifest.files:
        if not name.endswith(WEIGHT_SUFFIXES) and "/" not in name:
            (scratch / name).write_bytes(_read(read, name, spec.uri))
    return BaseModel(spec.uri, scratch, digest)


def fetch(spec: BaseModelSpec, cache: pathlib.Path) -> BaseModel:
    """The whole base model, every file verified against its manifest (and the pin, if any)."""
    if not _remote(spec.uri):
        return _local(spec, verify_files=True)
    from maas_workloads.serve.sources import SourceError, resolve

    try:
        directory = resolve(spec.uri, cache)
    except SourceError as error:
        raise InfrastructureError(f"cannot fetch the base model {spec.uri}: {error}") from error
    except artifact.ArtifactError as error:
        raise ConfigurationError(f"{FIELD}.uri: {error}") from error
    return BaseModel(spec.uri, directory, _verify(directory, spec))


def _local(spec: BaseModelSpec, verify_files: bool) -> BaseModel:
    try:
        location = storage.open_location(spec.uri)
    except storage.StorageConfigError as error:
        raise ConfigurationError(f"{FIELD}.uri: {error}") from error
    assert isinstance(location, storage.LocalLocation)
    directory = location.root
    if not (directory / "config.json").is_file():
        raise ConfigurationError(
            f"{FIELD}.uri: {directory} has no config.json: point at a Hugging Face model directory"
        )
    if not (directory / contract.MANIFEST_FILE).is_file():
        if spec.sha256 is not None:
            raise ConfigurationError(
                f"{FIELD}.sha256: {spec.uri} has no {contract.MANIFEST_FILE} to check the pin against"
            )
        return BaseModel(spec.uri, directory, None)
    if verify_files:
        return BaseModel(spec.uri, directory, _verify(directory, spec))
    return BaseModel(spec.uri, directory, _check_pin((directory / contract.MANIFEST_FILE).read_bytes(), spec))


def _verify(directory: pathlib.Path, spec: BaseModelSpec) -> str:
    digest = _check_pin((directory / contract.MANIFEST_FILE).read_bytes(), spec)
    try:
        artifact.verify(directory, digest)
    except artifact.ArtifactError as error:
        raise ConfigurationError(f"{FIELD}.uri: {spec.uri}: {error}") from error
    return digest


def _check_pin(manifest_bytes: bytes, spec: BaseModelSpec) -> str:
    digest = artifact.sha256_bytes(manifest_bytes)
    if spec.sha256 is not None and digest != spec.sha256:
        raise ConfigurationError(
            f"{FIELD}.sha256: {spec.uri}/{contract.MANIFEST_FILE} has sha256 {digest}, not the pinned "
            f"{spec.sha256}: the model was replaced or the pin is stale"
        )
    return digest


def _parse(manifest_bytes: bytes, uri: str) -> artifact.ArtifactManifest:
    try:
        manifest = artifact.parse_manifest(manifest_bytes)
    except artifact.ArtifactError as error:
        raise ConfigurationError(f"{FIELD}.uri: {uri}/{contract.MANIFEST_FILE}: {error}") from error
    if not isinstance(manifest, artifact.CausalLMManifest):
        raise ConfigurationError(f"{FIELD}.uri: {uri} is a {manifest.format} artifact, not a causal LM")
    return manifest


def _reader(uri: str) -> Callable[[str], bytes]:
    if uri.startswith("s3://"):
        return storage.open_location(uri).read_bytes

    def get(name: str) -> bytes:
        url = f"{uri.rstrip('/')}/{name}"
        try:
            with urllib.request.urlopen(url, timeout=_TIMEOUT_SECONDS) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as error:
            if error.code == 404:
                raise storage.ObjectNotFoundError(f"GET {url}: 404") from error
            raise storage.StorageUnavailableError(f"GET {url} answered {error.code} {error.reason}") from error
        except (urllib.error.URLError, OSError) as error:
            raise storage.StorageUnavailableError(f"GET {url} failed: {error}") from error

    return get


def _read(read: Callable[[str], bytes], name: str, uri: str) -> bytes:
    try:
        return read(name)
    except storage.ObjectNotFoundError as error:
        raise ConfigurationError(
            f"{FIELD}.uri: {uri} has no {name}: an s3:// or https:// base model must be an artifact "
            f"with {contract.MANIFEST_FILE}"
        ) from error
    except storage.StorageConfigError as error:
        raise ConfigurationError(f"{FIELD}.uri: {error}") from error
    except storage.StorageUnavailableError as error:
        raise InfrastructureError(f"cannot read the base model {uri}: {error}") from error
