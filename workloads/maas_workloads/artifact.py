"""The model artifact: a directory of model files plus `manifest.json`, written last.

The trainer writes artifacts, the inference server reads them; both go through this module.
The manifest lists the sha256 of every file, so a reader can refuse a tampered or partial
artifact, and the manifest's own sha256 is what the operator pins (`status.model.sha256`).

Three formats, told apart by the manifest's `format`:
- tensor models (`torchscript`, `torch.export`, `onnx`): one model file, named input and
  output tensors (`TensorManifest`), served over the Open Inference Protocol;
- causal language models (`hf-causal-lm`): a Hugging Face model directory — `config.json`,
  `*.safetensors`, tokenizer files with a chat template, `generation_config.json`
  (`CausalLMManifest`), served over the OpenAI API;
- LoRA adapters (`peft-lora`): PEFT's `adapter_config.json` + `adapter_model.safetensors`,
  naming the base model they apply to by URI and manifest sha256 (`AdapterManifest`).

Tensor models and causal LMs may carry optimized variants (int8, fp16, bf16, onnx) under
`variants/<name>/`, each listed in the manifest's `variants` with its own files, datatypes,
size and the accuracy (or perplexity) measured after conversion. The top-level `files` are
the full model's alone, so a manifest without variants reads as before, and a reader that
serves one variant fetches and verifies only that variant's files (`select`, `verify`).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from maas_workloads.contract import MANIFEST_FILE

FORMAT_VERSION = 1
Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
]
"""Every Open Inference Protocol tensor datatype (KServe's v2 protocol, "Tensor Data Types")."""
TensorFormat = Literal["torchscript", "torch.export", "onnx"]
VariantName = Literal["int8", "fp16", "bf16", "onnx"]
"""The optimized variants a TrainingJob can publish (`spec.output.variants`)."""
VARIANTS_DIR = "variants"
"""Variant files live under `variants/<name>/` in the artifact directory."""
CAUSAL_LM_FORMAT = "hf-causal-lm"
LORA_ADAPTER_FORMAT = "peft-lora"
CAUSAL_LM_REQUIRED_FILES = ("config.json", "generation_config.json", "tokenizer_config.json")
"""Files every causal-LM artifact has, besides at least one `*.safetensors` and a tokenizer."""
ADAPTER_REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
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


class Variant(_Model):
    """One optimized copy of the model, published next to the full one and served instead of it on request.

    Its `metrics` are measured on the job's validation split after conversion, with the same
    evaluator as the full model's in the same manifest (e.g. `val_accuracy` and
    `val_accuracy_drop` in points, or `val_perplexity` and `val_perplexity_ratio`).
    """

    format: TensorFormat | Literal["hf-causal-lm"]
    files: dict[str, FileEntry]
    """The variant's files, by path relative to the artifact directory (under variants/<name>/)."""
    model_file: str | None = Field(default=None, alias="modelFile")
    """Tensor models: the file the server loads."""
    directory: str | None = None
    """Causal LMs: the Hugging Face model directory of the variant, relative to the artifact."""
    datatypes: list[Datatype]
    """The datatypes of its weights (inputs and outputs keep the full model's)."""
    size_bytes: int = Field(alias="sizeBytes", ge=0)
    """Its files' size on disk."""
    quantization: str | None = None
    """How it was made, e.g. `torch.ao.quantization.quantize_dynamic(Linear, qint8)`."""
    metrics: dict[str, float] = Field(default_factory=dict)
    summary: str | None = None
    """Its cost against the full model, in words with the numbers."""

    def check_files(self, name: str) -> None:
        """Raise ArtifactError when the file (or directory) it names is not among its files."""
        prefix = f"{VARIANTS_DIR}/{name}/"
        outside = [path for path in self.files if not path.startswith(prefix)]
        if outside:
            raise ArtifactError(f"variant {name!r} lists {', '.join(outside)}, outside {prefix}")
        if self.model_file is not None and self.model_file not in self.files:
            raise ArtifactError(f"variant {name!r}: model file {self.model_file!r} is not among its files")
        if self.directory is not None and not any(path.startswith(f"{self.directory}/") for path in self.files):
            raise ArtifactError(f"variant {name!r}: directory {self.directory!r} has none of its files")


class RejectedVariant(_Model):
    """A requested variant that is not in the artifact: over maxAccuracyDrop, or its conversion failed."""

    message: str
    metrics: dict[str, float] = Field(default_factory=dict)


class _ManifestBase(_Model):
    format_version: int = Field(default=FORMAT_VERSION, alias="formatVersion")
    files: dict[str, FileEntry]
    """Every file of the artifact but the manifest, by path relative to the directory."""
    source: Source = Field(default_factory=Source)
    metrics: dict[str, float] = Field(default_factory=dict)
    framework_versions: dict[str, str] = Field(default_factory=dict, alias="frameworkVersions")
    created_at: str | None = Field(default=None, alias="createdAt")

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2).encode()

    def check_files(self) -> None:
        """Raise ArtifactError when a file the format needs is not among `files`."""


class TensorManifest(_ManifestBase):
    """A tensor model: one program file with named inputs and outputs (OIP v2)."""

    format: TensorFormat
    model_file: str = Field(alias="modelFile")
    """The file the server loads, relative to the artifact directory."""
    weights_file: str | None = Field(default=None, alias="weightsFile")
    """The same weights in safetensors, for tools that want them without the program."""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str] | None = None
    """Class names, index-aligned with the output's last dimension, when known."""
    variants: dict[VariantName, Variant] = Field(default_factory=dict)
    rejected_variants: dict[VariantName, RejectedVariant] = Field(default_factory=dict, alias="rejectedVariants")
    """Requested variants left out, and why (the numbers)."""

    def check_files(self) -> None:
        if self.model_file not in self.files:
            raise ArtifactError(f"model file {self.model_file!r} is not among the artifact's files")
        for name, variant in self.variants.items():
            variant.check_files(name)
            if variant.model_file is None or variant.format == CAUSAL_LM_FORMAT:
                raise ArtifactError(f"variant {name!r} of a tensor model needs a tensor format and a modelFile")

    def select(self, variant: str | None) -> TensorManifest:
        """The manifest as the server sees it when serving `variant` (None: the full model):
        that variant's format, model file and files, the same inputs and outputs."""
        if variant is None:
            return self
        chosen = _variant(self.variants, variant)
        assert chosen.model_file is not None  # check_files ensures it
        return self.model_copy(
            update={
                "format": chosen.format,
                "model_file": chosen.model_file,
                "files": chosen.files,
                "variants": {},
                "rejected_variants": {},
            }
        )


class CausalLMManifest(_ManifestBase):
    """A Hugging Face causal language model directory, loadable by transformers and vLLM."""

    format: Literal["hf-causal-lm"]
    architecture: str
    """`model_type` of config.json, e.g. llama, qwen2, mistral."""
    context_length: int = Field(alias="contextLength", gt=0)
    """Most tokens (prompt + output) one sequence may hold (config's max_position_embeddings)."""
    parameters: int | None = Field(default=None, ge=0)
    """Number of parameters, for humans and capacity planning."""
    dtype: str | None = None
    """The weights' dtype on disk, e.g. float32, bfloat16."""
    variants: dict[VariantName, Variant] = Field(default_factory=dict)
    rejected_variants: dict[VariantName, RejectedVariant] = Field(default_factory=dict, alias="rejectedVariants")
    """Requested variants left out, and why (the numbers)."""

    def check_files(self) -> None:
        _require(self.files, CAUSAL_LM_REQUIRED_FILES, "a causal-LM artifact")
        if not any(name.endswith(".safetensors") for name in self.files):
            raise ArtifactError("a causal-LM artifact needs its weights as *.safetensors")
        if not any(name in self.files for name in ("tokenizer.json", "tokenizer.model")):
            raise ArtifactError("a causal-LM artifact needs tokenizer.json or tokenizer.model")
        for name, variant in self.variants.items():
            variant.check_files(name)
            if variant.directory is None or variant.format != CAUSAL_LM_FORMAT:
                raise ArtifactError(f"variant {name!r} of a causal LM needs format hf-causal-lm and a directory")

    def select(self, variant: str | None) -> CausalLMManifest:
        """The manifest of `variant` (None: the full model), whose files are under `variant_directory`."""
        if variant is None:
            return self
        chosen = _variant(self.variants, variant)
        prefix = f"{chosen.directory}/"
        files = {path.removeprefix(prefix): entry for path, entry in chosen.files.items()}
        return self.model_copy(update={"files": files, "variants": {}, "rejected_variants": {}})

    def variant_directory(self, variant: str | None) -> str:
        """The model directory of `variant` relative to the artifact ("." for the full model)."""
        if variant is None:
            return "."
        directory = _variant(self.variants, variant).directory
        assert directory is not None  # check_files ensures it
        return directory


class BaseModelReference(_Model):
    uri: str
    """Where the base causal-LM artifact is (s3://, file://, pvc://, https://)."""
    sha256: str
    """The sha256 of the base artifact's manifest.json: the adapter applies to exactly that model."""


class AdapterManifest(_ManifestBase):
    """A PEFT LoRA adapter, applied on top of the base causal LM it names."""

    format: Literal["peft-lora"]
    base_model: BaseModelReference = Field(alias="baseModel")
    rank: int = Field(gt=0)
    alpha: float
    target_modules: list[str] = Field(alias="targetModules")
    context_length: int = Field(alias="contextLength", gt=0)

    def check_files(self) -> None:
        _require(self.files, ADAPTER_REQUIRED_FILES, "a LoRA adapter artifact")


def _variant(variants: dict[VariantName, Variant], name: str) -> Variant:
    if name not in variants:
        available = ", ".join(["full (the default)", *sorted(variants)])
        raise ArtifactError(f"the artifact has no variant {name!r} (spec.model.variant); it has: {available}")
    return variants[name]


def _require(files: dict[str, FileEntry], required: tuple[str, ...], what: str) -> None:
    missing = [name for name in required if name not in files]
    if missing:
        raise ArtifactError(f"{what} needs {', '.join(missing)}, which the manifest does not list")


ArtifactManifest = TensorManifest | CausalLMManifest | AdapterManifest
_MANIFEST_ADAPTER: TypeAdapter[ArtifactManifest] = TypeAdapter(
    Annotated[ArtifactManifest, Field(discriminator="format")]
)


def parse_manifest(data: bytes | str) -> ArtifactManifest:
    """The manifest of any format; raises ArtifactError (naming the problem) when invalid."""
    try:
        return _MANIFEST_ADAPTER.validate_json(data)
    except ValueError as error:
        raise ArtifactError(f"not a valid manifest: {error}") from error


def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe_files(directory: pathlib.Path) -> dict[str, FileEntry]:
    """sha256 and size of every file under the directory except the manifest and the variants."""
    entries: dict[str, FileEntry] = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_file() and relative != MANIFEST_FILE and not relative.startswith(f"{VARIANTS_DIR}/"):
            entries[relative] = FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
    return entries


def describe_variant_files(directory: pathlib.Path, name: str) -> dict[str, FileEntry]:
    """sha256 and size of every file under `variants/<name>/`, by path relative to `directory`."""
    root = directory / VARIANTS_DIR / name
    return {
        path.relative_to(directory).as_posix(): FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def selected_files(manifest: ArtifactManifest, variant: str | None) -> dict[str, FileEntry]:
    """The files a reader of `variant` needs (None: the full model's), by path relative to the artifact.

    Raises ArtifactError, listing the variants there are, when the artifact has no such variant."""
    if variant is None:
        return manifest.files
    if isinstance(manifest, AdapterManifest):
        raise ArtifactError(f"a LoRA adapter artifact has no variants (spec.model.variant is {variant!r})")
    return _variant(manifest.variants, variant).files


def write_manifest(directory: pathlib.Path, manifest: ArtifactManifest) -> str:
    """Write manifest.json atomically, last; returns its sha256 (what the operator pins)."""
    manifest.check_files()
    data = manifest.to_json()
    temporary = directory / f".{MANIFEST_FILE}.tmp"
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(directory / MANIFEST_FILE)
    return sha256_bytes(data)


def load_manifest(directory: pathlib.Path, expected_sha256: str | None = None) -> tuple[ArtifactManifest, str]:
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
        manifest = parse_manifest(data)
    except ArtifactError as error:
        raise ArtifactError(f"{path}: {error}") from error
    return manifest, digest


def verify(directory: pathlib.Path, expected_sha256: str | None = None, variant: str | None = None) -> ArtifactManifest:
    """The manifest, after checking the size and sha256 of every file of the full model (or of
    `variant` alone); raises ArtifactError."""
    manifest, _ = load_manifest(directory, expected_sha256)
    manifest.check_files()
    for relative, entry in selected_files(manifest, variant).items():
        path = directory / relative
        if not path.is_file():
            raise ArtifactError(f"{relative} is listed in the manifest but missing")
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise ArtifactError(f"{relative} does not match its sha256 in the manifest: the file was altered")
    return manifest
