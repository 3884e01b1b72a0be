"""Where a model comes from: a local directory, a mounted PVC, or a remote copy fetched first.

Remote artifacts (`s3://`, `http(s)://`) are fetched file by file as their manifest lists
them (the full model's files, or one variant's), the manifest last, into a cache directory; the
loader then verifies every checksum exactly as for a local artifact.
"""

from __future__ import annotations

import pathlib
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Final
from urllib.parse import unquote, urlparse

from maas_workloads import storage
from maas_workloads.artifact import ArtifactError, parse_manifest, selected_files
from maas_workloads.contract import MANIFEST_FILE, PVC_MOUNT_ROOT

SCHEMES: Final = ("file", "pvc", "s3", "http", "https")
_TIMEOUT_SECONDS: Final = 60.0
_CHUNK: Final = 1 << 20


class SourceError(Exception):
    """The model URI is malformed or its files cannot be fetched."""


def model_name_of(uri: str) -> str:
    """A default model name: the URI's last path segment (`s3://models/digits` -> `digits`)."""
    parsed = urlparse(uri) if "://" in uri else None
    path = unquote(parsed.path or parsed.netloc) if parsed else uri
    name = pathlib.PurePosixPath(path.rstrip("/")).name
    return name or "model"


def resolve(
    uri: str,
    cache_dir: pathlib.Path,
    pvc_root: pathlib.Path = pathlib.Path(PVC_MOUNT_ROOT),
    variant: str | None = None,
) -> pathlib.Path:
    """The local artifact directory for a model URI, fetching remote artifacts into cache_dir
    (only `variant`'s files when one is named; raises ArtifactError when the artifact lacks it)."""
    if "://" not in uri:
        return _local(pathlib.Path(uri))
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise SourceError(f"file URI {uri!r} names host {parsed.netloc!r}; use file:///absolute/path")
        return _local(pathlib.Path(unquote(parsed.path)))
    if parsed.scheme == "pvc":
        # pvc://<claim>/<path>: the claim is mounted at <pvc_root>/<claim>, as for training pods.
        if not parsed.netloc:
            raise SourceError(f"PVC URI {uri!r} needs a claim name: pvc://<claim>/<path>")
        return _local(pvc_root / parsed.netloc / unquote(parsed.path).lstrip("/"))
    if parsed.scheme == "s3":
        try:
            location = storage.open_location(uri)
        except storage.StorageError as error:
            raise SourceError(str(error)) from error
        return _fetch(uri, cache_dir, location.read_bytes, location.download_file, variant)
    if parsed.scheme in ("http", "https"):
        base = uri.rstrip("/")
        return _fetch(
            uri,
            cache_dir,
            lambda key: _http_get(f"{base}/{key}"),
            lambda key, target: _http_download(f"{base}/{key}", target),
            variant,
        )
    raise SourceError(f"model URI {uri!r} has unsupported scheme {parsed.scheme!r}; use one of {', '.join(SCHEMES)}")


def _local(path: pathlib.Path) -> pathlib.Path:
    if not path.is_dir():
        raise SourceError(f"{path} is not a directory: the model must be an artifact directory with {MANIFEST_FILE}")
    return path


def _fetch(
    uri: str,
    cache_dir: pathlib.Path,
    read: Callable[[str], bytes],
    download: Callable[[str, pathlib.Path], None],
    variant: str | None,
) -> pathlib.Path:
    destination = cache_dir / model_name_of(uri)
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    try:
        manifest_bytes = read(MANIFEST_FILE)
        try:
            manifest = parse_manifest(manifest_bytes)
        except ArtifactError as error:
            raise ArtifactError(f"{uri}/{MANIFEST_FILE}: {error}") from error
        for relative in selected_files(manifest, variant):
            download(relative, _inside(destination, relative))
    except storage.ObjectNotFoundError as error:
        raise SourceError(f"{uri} is not a complete artifact: {error}") from error
    except storage.StorageError as error:
        raise SourceError(f"fetching {uri} failed: {error}") from error
    # The manifest goes last, as the artifact contract wants: a partial fetch has none.
    (destination / MANIFEST_FILE).write_bytes(manifest_bytes)
    return destination


def _inside(root: pathlib.Path, relative: str) -> pathlib.Path:
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ArtifactError(f"the manifest lists {relative!r}, which points outside the artifact")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _http_get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_SECONDS) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as error:
        raise SourceError(f"GET {url} answered {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        raise SourceError(f"GET {url} failed: {error}") from error


def _http_download(url: str, target: pathlib.Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_SECONDS) as response, target.open("wb") as handle:
            shutil.copyfileobj(response, handle, _CHUNK)
    except urllib.error.HTTPError as error:
        raise SourceError(f"GET {url} answered {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        raise SourceError(f"GET {url} failed: {error}") from error
