"""Checkpoint, artifact and dataset storage: local paths / `file://` and `s3://`.

A `Location` is a root (a directory, or a bucket and key prefix); keys below it are
relative, `/`-separated paths. Whole directories are published with `publish_directory`,
which makes the marker file (for example `manifest.json`) visible last: a reader that finds
the marker finds every other file complete. Locally the directory is staged beside its
destination and renamed into place; on S3 the marker is deleted first and uploaded last.
S3 locations are in storage_s3.py.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from typing import Any
from urllib.parse import unquote, urlparse

from maas_workloads import contract

_STAGING_PREFIX = ".staging-"
_RETIRED_PREFIX = ".retired-"
_TEMPORARY_FILE = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")
"""A file being written by write_bytes / upload_file / download_file (renamed into place when complete)."""


class StorageError(Exception):
    """A storage operation failed."""


class StorageUnavailableError(StorageError):
    """The storage could not be reached or refused to serve for now: worth retrying."""


class StorageConfigError(StorageError):
    """The location can never work as given (bad URI, missing bucket, denied credentials)."""


class ObjectNotFoundError(StorageError):
    """The key does not exist."""


def clean_key(key: str) -> str:
    """The key without empty or `.` parts; StorageConfigError for `..` (a key never leaves its root)."""
    parts = [part for part in key.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise StorageConfigError(f"storage key {key!r} must not contain '..'")
    return "/".join(parts)


def join_keys(*keys: str) -> str:
    """Keys joined with `/`, each cleaned, empty ones left out."""
    return "/".join(part for part in (clean_key(key) for key in keys) if part)


class Location(ABC):
    """A storage root; every key is relative to it."""

    uri: str

    @abstractmethod
    def child(self, prefix: str) -> Location:
        """The location of a key prefix below this one."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's content; raises ObjectNotFoundError."""

    @abstractmethod
    def read_prefix(self, key: str, size: int) -> bytes:
        """At most the first `size` bytes of the object (to sample a large file); raises ObjectNotFoundError."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Replace the object at once: readers see the old or the new content, never a part."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under the prefix (recursively), sorted; staging leftovers are not listed."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under the prefix (a missing prefix is fine)."""

    @abstractmethod
    def upload_file(self, source: pathlib.Path, key: str) -> None: ...

    @abstractmethod
    def download_file(self, key: str, destination: pathlib.Path) -> None: ...

    @abstractmethod
    def publish_directory(self, source: pathlib.Path, prefix: str, marker: str) -> None:
        """Copy a local directory under the prefix, replacing what was there, the marker file last.

        Until the marker appears a reader treats the prefix as absent or incomplete; files of a
        previous publication that the new one lacks are removed.
        """

    def check(self) -> None:
        """Fail fast with StorageUnavailableError / StorageConfigError when the location cannot be used."""
        self.list_keys(_STAGING_PREFIX + "probe")

    def download_directory(self, prefix: str, destination: pathlib.Path) -> list[str]:
        """Copy every object under the prefix into a local directory; returns the relative keys."""
        prefix = clean_key(prefix)
        keys = self.list_keys(prefix)
        if not keys:
            raise ObjectNotFoundError(f"nothing under {self.child(prefix).uri}")
        relative_keys = []
        for key in keys:
            relative = key[len(prefix) + 1 :] if prefix else key
            self.download_file(key, destination / relative)
            relative_keys.append(relative)
        return relative_keys

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalLocation(Location):
    """A directory on a local or mounted (PVC) filesystem."""

    def __init__(self, root: pathlib.Path) -> None:
        if not root.is_absolute():
            root = root.resolve()
        self.root = root
        self.uri = root.as_uri()

    def _path(self, key: str) -> pathlib.Path:
        key = clean_key(key)
        return self.root / key if key else self.root

    def child(self, prefix: str) -> LocalLocation:
        return LocalLocation(self._path(prefix))

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
            raise ObjectNotFoundError(f"{self._path(key)} does not exist") from error
        except OSError as error:
            raise StorageUnavailableError(f"cannot read {self._path(key)}: {error}") from error

    def read_prefix(self, key: str, size: int) -> bytes:
        try:
            with self._path(key).open("rb") as handle:
                return handle.read(size)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
            raise ObjectNotFoundError(f"{self._path(key)} does not exist") from error
        except OSError as error:
            raise StorageUnavailableError(f"cannot read {self._path(key)}: {error}") from error

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise _local_error(f"cannot write {path}", error) from error

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        if base.is_file():
            return [clean_key(prefix)]
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            relative = path.relative_to(self.root).as_posix()
            if path.is_file() and not any(
                part.startswith((_STAGING_PREFIX, _RETIRED_PREFIX)) or _TEMPORARY_FILE.match(part)
                for part in relative.split("/")
            ):
                keys.append(relative)
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if path == self.root:
            # Keep the root itself: it may be a mount point.
            for entry in path.iterdir() if path.is_dir() else []:
                _remove(entry)
        else:
            _remove(path)

    def upload_file(self, source: pathlib.Path, key: str) -> None:
        destination = self._path(key)
        temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.tmp")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, temporary)
            temporary.replace(destination)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise _local_error(f"cannot copy {source} to {destination}", error) from error

    def download_file(self, key: str, destination: pathlib.Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFoundError(f"{source} does not exist")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)

    def publish_directory(self, source: pathlib.Path, prefix: str, marker: str) -> None:
        destination = self._path(prefix)
        if destination == self.root:
            raise StorageConfigError(f"cannot publish over the storage root {self.uri}; give a prefix")
        if not (source / marker).is_file():
            raise StorageError(f"{source} has no {marker}: nothing marks it complete")
        token = uuid.uuid4().hex
        staging = destination.with_name(f"{_STAGING_PREFIX}{destination.name}-{token}")
        retired = destination.with_name(f"{_RETIRED_PREFIX}{destination.name}-{token}")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            # Only the top-level marker waits: a nested artifact's manifest is an ordinary file here.
            shutil.copytree(source, staging, ignore=_ignore_top(source, marker))
            shutil.copy2(source / marker, staging / marker)
            _fsync_tree(staging)
            if destination.exists():
                destination.rename(retired)
            staging.rename(destination)
        except OSError as error:
            _remove(staging)
            if retired.exists() and not destination.exists():
                retired.rename(destination)
            raise _local_error(f"cannot publish {source} to {destination}", error) from error
        _remove(retired)


def _ignore_top(source: pathlib.Path, name: str) -> Any:
    """A copytree `ignore` that leaves out `name` in `source` itself, not in its subdirectories."""

    def ignore(directory: str, _names: list[str]) -> list[str]:
        return [name] if pathlib.Path(directory) == source else []

    return ignore


def _fsync_tree(directory: pathlib.Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _local_error(what: str, error: OSError) -> StorageError:
    import errno

    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageConfigError(f"{what}: {error} (is the volume mounted writable for this user?)")
    return StorageUnavailableError(f"{what}: {error}")


def pvc_mount_root() -> pathlib.Path:
    """Where the pod mounts the claims named by `pvc://` URIs (contract.PVC_MOUNT_ROOT unless overridden)."""
    return pathlib.Path(os.environ.get(contract.ENV_PVC_MOUNT_ROOT) or contract.PVC_MOUNT_ROOT)


def open_location(uri: str) -> Location:
    """The location for a `file://` URI, a plain absolute path, an `s3://bucket/prefix` URI, or a
    `pvc://<claim>/<path>` URI (the claim mounted under pvc_mount_root())."""
    if not uri:
        raise StorageConfigError("empty storage URI; use file:///path or s3://bucket/prefix")
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        from maas_workloads.storage_s3 import S3Location

        return S3Location(parsed.netloc, unquote(parsed.path))
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageConfigError(f"{uri}: file:// URIs take no host; write file:///absolute/path")
        return LocalLocation(pathlib.Path(unquote(parsed.path)))
    if parsed.scheme == "pvc":
        if not parsed.netloc:
            raise StorageConfigError(f"{uri}: name the claim: pvc://<claim>/<path>")
        return LocalLocation(pvc_mount_root() / parsed.netloc / unquote(parsed.path).lstrip("/"))
    if parsed.scheme == "" and uri.startswith("/"):
        return LocalLocation(pathlib.Path(uri))
    raise StorageConfigError(f"{uri}: unsupported storage URI; use file:///absolute/path or s3://bucket/prefix")
