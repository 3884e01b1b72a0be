"""Which protocol an artifact needs, from its manifest alone, before the server starts."""

from __future__ import annotations

import pathlib
import urllib.request
from urllib.parse import unquote, urlparse

from maas_workloads import storage
from maas_workloads.artifact import CAUSAL_LM_FORMAT, LORA_ADAPTER_FORMAT, ArtifactError, parse_manifest
from maas_workloads.contract import MANIFEST_FILE, PVC_MOUNT_ROOT

_TIMEOUT_SECONDS = 30.0


def is_causal_lm(uri: str) -> bool:
    """True when the artifact's manifest says `hf-causal-lm` (or `peft-lora`: an adapter, served merged).

    Only manifest.json is read (a local file, or one GET for s3:// and https://). When it
    cannot be read or parsed the answer is False: the tensor-model server then starts,
    fetches the artifact itself and reports why it is not ready, as it always has.
    """
    try:
        data = _read_manifest(uri)
        return parse_manifest(data).format in (CAUSAL_LM_FORMAT, LORA_ADAPTER_FORMAT)
    except (OSError, ValueError, ArtifactError, storage.StorageError):
        return False


def _read_manifest(uri: str) -> bytes:
    if "://" not in uri:
        return (pathlib.Path(uri) / MANIFEST_FILE).read_bytes()
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return (pathlib.Path(unquote(parsed.path)) / MANIFEST_FILE).read_bytes()
    if parsed.scheme == "pvc":
        return (
            pathlib.Path(PVC_MOUNT_ROOT) / parsed.netloc / unquote(parsed.path).lstrip("/") / MANIFEST_FILE
        ).read_bytes()
    if parsed.scheme == "s3":
        return storage.open_location(uri).read_bytes(MANIFEST_FILE)
    if parsed.scheme in ("http", "https"):
        with urllib.request.urlopen(f"{uri.rstrip('/')}/{MANIFEST_FILE}", timeout=_TIMEOUT_SECONDS) as response:
            return bytes(response.read())
    raise ValueError(f"unsupported scheme {parsed.scheme!r}")
