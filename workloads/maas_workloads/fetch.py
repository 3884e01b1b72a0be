"""Fetch a model artifact into a local cache and verify it: the init container of LLM pods.

    python -m maas_workloads.fetch   # configured by MAAS_MODEL_URI, MAAS_MODEL_SHA256, MAAS_FETCH_DESTINATION
                                     # (and MAAS_MODEL_VARIANT: only that variant's files)

The engine (ours or vLLM) then starts from local disk. The artifact is staged next to its
destination and renamed into place only once every file matches the manifest, so a reader
never sees a partial copy; a destination that already holds the verified artifact (a PVC
cache shared by replicas and restarts) is used as it is, without downloading again.
An artifact that is a LoRA adapter (format peft-lora) is merged into the base model it
names (fetched and verified the same way), so either engine serves the fine-tune as a plain
causal LM. LoRA adapters named in MAAS_LORA_ADAPTERS (JSON: [{"name", "uri", "sha256"}]) go to
`<destination>-lora-<name>` the same way.

Exit codes as for training pods (contract.ExitCode): 64 for an artifact that can never
load (checksum mismatch, not an artifact), 75 when storage is unreachable (retried).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Final

from maas_workloads import contract, storage
from maas_workloads.artifact import AdapterManifest, ArtifactError, verify
from maas_workloads.causal_lm import merge_lora_adapter
from maas_workloads.serve import sources

ENV_DESTINATION: Final = contract.ENV_FETCH_DESTINATION
ENV_LORA_ADAPTERS: Final = contract.ENV_LORA_ADAPTERS
log = logging.getLogger("maas.fetch")


def fetch(
    uri: str,
    destination: pathlib.Path,
    expected_sha256: str | None,
    *,
    merge_adapter: bool = True,
    variant: str | None = None,
) -> bool:
    """Make `destination` a verified copy of the artifact at `uri` (of its manifest and `variant`'s
    files alone, when one is named); returns False on a cache hit.

    With `merge_adapter`, a LoRA adapter artifact becomes its base model with the adapter merged
    (a causal LM); without, it is copied as it is (adapters vLLM serves by name).

    Raises ArtifactError when the artifact does not match its manifest or the pin, and
    sources.SourceError when it cannot be fetched.
    """
    if destination.is_dir():
        try:
            verify(destination, expected_sha256, variant)
            return False
        except ArtifactError as error:
            log.warning("cached copy is not usable, fetching again", extra={"reason": str(error)})
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        fetched = sources.resolve(uri, staging / "download", variant=variant)
        target = staging / "artifact"
        if fetched.is_relative_to(staging):
            fetched.rename(target)
        else:  # a local directory or mounted volume: copy it onto the cache volume
            shutil.copytree(fetched, target)
        manifest = verify(target, expected_sha256, variant)
        if merge_adapter and isinstance(manifest, AdapterManifest):
            # A fine-tune that published only its LoRA adapter: fetch the base it names and serve the merge.
            base = staging / "base"
            fetch(manifest.base_model.uri, base, manifest.base_model.sha256)
            adapter, target = target, staging / "merged"
            merge_lora_adapter(adapter, base, target)
        if destination.exists():  # another pod (same PVC) got there first, or a stale copy
            shutil.rmtree(destination)
        target.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uri = os.environ.get(contract.ENV_MODEL_URI, "")
    destination = os.environ.get(ENV_DESTINATION, "")
    if not uri or not destination:
        print(f"set {contract.ENV_MODEL_URI} and {ENV_DESTINATION}", file=sys.stderr)
        return contract.ExitCode.CONFIGURATION_ERROR
    try:
        adapters = json.loads(os.environ.get(ENV_LORA_ADAPTERS) or "[]")
        variant = os.environ.get(contract.ENV_MODEL_VARIANT) or None
        jobs = [(uri, pathlib.Path(destination), os.environ.get(contract.ENV_MODEL_SHA256) or None, True, variant)]
        jobs += [
            (a["uri"], pathlib.Path(f"{destination}-lora-{a['name']}"), a.get("sha256"), False, None) for a in adapters
        ]
    except (ValueError, KeyError, TypeError) as error:
        print(f"{ENV_LORA_ADAPTERS} is not a JSON list of {{name, uri, sha256}}: {error}", file=sys.stderr)
        return contract.ExitCode.CONFIGURATION_ERROR
    for source, target, pin, merge, selected in jobs:
        try:
            downloaded = fetch(source, target, pin, merge_adapter=merge, variant=selected)
        except ArtifactError as error:
            _report(f"{source}: {error}")
            return contract.ExitCode.CONFIGURATION_ERROR
        except (sources.SourceError, storage.StorageError, OSError) as error:
            _report(f"{source} cannot be fetched: {error}")
            return contract.ExitCode.INFRASTRUCTURE_ERROR
        log.info("%s %s into %s", "fetched" if downloaded else "cache hit for", source, target)
    return contract.ExitCode.SUCCESS


def _report(message: str) -> None:
    print(message, file=sys.stderr)
    path = pathlib.Path(os.environ.get(contract.ENV_TERMINATION_LOG, contract.TERMINATION_LOG))
    with contextlib.suppress(OSError):  # outside Kubernetes there may be no termination log
        path.write_text(json.dumps({"error": message})[: contract.TERMINATION_MESSAGE_MAX_BYTES])


if __name__ == "__main__":
    raise SystemExit(main())
