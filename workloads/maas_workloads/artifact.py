"""The model artifact: a directory of model files plus `manifest.json`, written last.

The trainer writes artifacts, the inference server reads them; both go through this module.
The manifest lists the sha256 of every file, so a reader can refuse a tampered or partial
artifact, and the manifest's own sha256 is what the operator pins (`status.model.sha256`).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from maas_workloads.contract import MANIFEST_FILE

FORMAT_VERSION = 1
Datatype = Literal["FP32", "FP16", "BF16", "FP64", "INT64", "INT32", "INT16", "INT8", "UINT8", "BOOL", "BYTES"]
_CHUNK = 1 << 20


class ArtifactError(Exception):
    """The artifact is missing, incomplete or does not match its manifest."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class TensorSpec(_Model):
    name: str
    datatype: Datatype
    shape: list[int]
    """-1 marks a variable dimension; the first one is the batch."""


class FileEntry(_Model):
    sha256: str
    size: int


class Source(_Model):
    kind: str = "TrainingJob"
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None
    attempt: int | None = None


class Manifest(_Model):
    format_version: int = Field(default=FORMAT_VERSION, alias="formatVersion")
    format: Literal["torchscript", "torch.export", "onnx"]
    model_file: str = Field(alias="modelFile")
    """The file the server loads, relative to the artifact directory."""
    weights_file: str | None = Field(default=None, alias="weightsFile")
    """The same weights in safetensors, for tools that want them without the program."""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    files: dict[str, FileEntry]
    source: Source = Field(default_factory=Source)
    metrics: dict[str, float] = Field(default_factory=dict)
    framework_versions: dict[str, str] = Field(default_factory=dict, alias="frameworkVersions")
    created_at: str | None = Field(default=None, alias="createdAt")
    labels: list[str] | None = None
    """Class names, index-aligned with the output's last dimension, when known."""

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2).encode()


def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe_files(directory: pathlib.Path) -> dict[str, FileEntry]:
    """sha256 and size of every file under the directory except the manifest."""
    entries: dict[str, FileEntry] = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_file() and relative != MANIFEST_FILE:
            entries[relative] = FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
    return entries


def write_manifest(directory: pathlib.Path, manifest: Manifest) -> str:
    """Write manifest.json atomically, last; returns its sha256 (what the operator pins)."""
    if manifest.model_file not in manifest.files:
        raise ArtifactError(f"model file {manifest.model_file!r} is not among the artifact's files")
    data = manifest.to_json()
    temporary = directory / f".{MANIFEST_FILE}.tmp"
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(directory / MANIFEST_FILE)
    return sha256_bytes(data)


def load_manifest(directory: pathlib.Path, expected_sha256: str | None = None) -> tuple[Manifest, str]:
    """Read and parse manifest.json, checking its own sha256 when a pin is given."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: the artifact is incomplete or not an artifact")
    data = path.read_bytes()
    digest = sha256_bytes(data)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ArtifactError(
            f"{MANIFEST_FILE} has sha256 {digest}, but {expected_sha256} was pinned: "
            "the artifact was replaced or the pin is stale"
        )
    try:
        manifest = Manifest.model_validate_json(data)
    except ValueError as error:
        raise ArtifactError(f"{path} is not a valid manifest: {error}") from error
    return manifest, digest


def verify(directory: pathlib.Path, expected_sha256: str | None = None) -> Manifest:
    """The manifest, after checking every listed file's size and sha256; raises ArtifactError."""
    manifest, _ = load_manifest(directory, expected_sha256)
    for relative, entry in manifest.files.items():
        path = directory / relative
        if not path.is_file():
            raise ArtifactError(f"{relative} is listed in the manifest but missing")
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise ArtifactError(f"{relative} does not match its sha256 in the manifest: the file was altered")
    return manifest
