"""Causal-LM training records: where they are, which format, and whether each one is usable.

A dataset URI names one file, or a directory / key prefix whose `.jsonl`, `.json` and `.txt` files
are read in name order. Three formats (spec.trainer.dataset.format):
- text:  JSONL, `{"text": "..."}` per line;
- chat:  JSONL, `{"messages": [{"role": "user", "content": "..."}, ...]}` per line (OpenAI shape);
- plain: text files, every line (with its line break) a record.
A record that does not fit its format is a configuration error naming the file and line.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from maas_operator.api.trainer import DatasetFormat
from maas_workloads import storage
from maas_workloads.train.errors import ConfigurationError, InfrastructureError
from maas_workloads.train.llm import synthetic

JSON_SUFFIXES = (".jsonl", ".json")
TEXT_SUFFIXES = (".txt",)
ROLES = ("system", "user", "assistant", "tool")
SAMPLE_BYTES = 1 << 20
"""How much of the first file the head reads to check a streamed dataset."""

Record = dict[str, Any]
"""{"text": str} or {"messages": [{"role", "content"}, ...]}."""


@dataclass(frozen=True)
class DataSource:
    """The files behind one dataset URI (or a generator), and their format."""

    uri: str
    field: str
    """The spec field the URI came from, for error messages (spec.trainer.dataset.uri, ...)."""
    format: DatasetFormat
    location: storage.Location | None = None
    keys: tuple[str, ...] = ()
    """Files relative to `location`; empty for synthetic data."""

    @property
    def synthetic(self) -> bool:
        """Generated data (synthetic:...), not files."""
        return self.uri.startswith(synthetic.SCHEME)

    def paths(self) -> list[str]:
        """Every file as a URI (file:// or s3://), for Ray Data's readers."""
        assert self.location is not None
        return [self.location.child(key).uri for key in self.keys]


def open_source(uri: str, field: str, declared: DatasetFormat | None) -> DataSource:
    """Find the files and settle the format, reading no more than the first record; ConfigurationError
    names `field` when nothing usable is there, InfrastructureError when storage cannot be reached."""
    if uri.startswith("synthetic:"):
        try:
            synthetic.ArithmeticOptions.parse(uri)
        except ValueError as error:
            raise ConfigurationError(f"{field}: {error}") from error
        if declared not in (None, "chat"):
            raise ConfigurationError(f"{field}: {synthetic.SCHEME} is chat data, not format {declared}")
        return DataSource(uri, field, "chat")
    location, keys = _files(uri, field)
    suffixes = {pathlib.PurePosixPath(key).suffix.lower() for key in keys}
    if declared == "plain" or (declared is None and suffixes <= set(TEXT_SUFFIXES)):
        return DataSource(uri, field, "plain", location, keys)
    if suffixes & set(TEXT_SUFFIXES):
        raise ConfigurationError(f"{field}: {uri} mixes .txt and JSON files; keep one format per dataset")
    if declared is not None:
        return DataSource(uri, field, declared, location, keys)
    first = next(iter(_json_records(location, keys[0], SAMPLE_BYTES, uri, field)), None)
    if first is None:
        raise ConfigurationError(f"{field}: {location.child(keys[0]).uri} holds no records")
    where, record = first
    if "messages" in record:
        return DataSource(uri, field, "chat", location, keys)
    if "text" in record:
        return DataSource(uri, field, "text", location, keys)
    raise ConfigurationError(
        f"{field}: {where}: JSONL records need a `text` string or a `messages` list; "
        f"this one has {_keys(record)} (or set dataset.format)"
    )


def _files(uri: str, field: str) -> tuple[storage.Location, tuple[str, ...]]:
    try:
        root = storage.open_location(uri.rstrip("/"))
        keys = [k for k in root.list_keys() if k.lower().endswith(JSON_SUFFIXES + TEXT_SUFFIXES)]
        if keys:
            return root, tuple(keys)
        parent, _, name = uri.rstrip("/").rpartition("/")
        location = storage.open_location(parent)
        if location.exists(name):
            return location, (name,)
    except storage.StorageConfigError as error:
        raise ConfigurationError(f"{field}: {error}") from error
    except storage.StorageUnavailableError as error:
        raise InfrastructureError(f"cannot read the dataset {uri}: {error}") from error
    raise ConfigurationError(f"{field}: {uri} is neither a file nor a directory with .jsonl, .json or .txt files")


def read(source: DataSource, limit_bytes: int | None = None) -> Iterator[tuple[str, Record]]:
    """(where, record) for every record, checked against the format; with `limit_bytes`, only the
    records within that many bytes of the first file (a sample)."""
    if source.synthetic:
        options = synthetic.ArithmeticOptions.parse(source.uri)
        for index, record in enumerate(synthetic.conversations(options)):
            yield f"{source.uri} record {index + 1}", record
        return
    assert source.location is not None
    keys = source.keys[:1] if limit_bytes is not None else source.keys
    for key in keys:
        if source.format == "plain":
            for where, line in _lines(source.location, key, limit_bytes, source.uri):
                yield where, {"text": line}
            continue
        for where, record in _json_records(source.location, key, limit_bytes, source.uri, source.field):
            yield where, check(record, source.format, where, source.field)


def check(record: Any, format: DatasetFormat, where: str, field: str) -> Record:
    """The record if it fits the format; ConfigurationError naming the field, place and fix."""
    if format == "chat":
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages:
            raise ConfigurationError(
                f"{field}: {where}: chat data needs a non-empty `messages` list of "
                f"{{role, content}} objects; this record has {_keys(record)}"
            )
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise ConfigurationError(f"{field}: {where}: messages[{index}].role must be one of {', '.join(ROLES)}")
            if not isinstance(message.get("content"), str):
                raise ConfigurationError(f"{field}: {where}: messages[{index}].content must be a string")
        if not any(m["role"] == "assistant" for m in messages):
            raise ConfigurationError(f"{field}: {where}: a conversation needs an assistant message to learn from")
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise ConfigurationError(f"{field}: {where}: text data needs a `text` string; this record has {_keys(record)}")
    return {"text": text}


def _keys(record: Any) -> str:
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not an object"
    return "keys " + ", ".join(sorted(record)) if record else "no keys"


def _content(location: storage.Location, key: str, limit_bytes: int | None, uri: str) -> bytes:
    try:
        if limit_bytes is None:
            return location.read_bytes(key)
        data = location.read_prefix(key, limit_bytes)
        # A cut sample ends at its last complete line.
        return data if len(data) < limit_bytes else data[: data.rfind(b"\n") + 1]
    except storage.StorageUnavailableError as error:
        raise InfrastructureError(f"cannot read the dataset {uri}: {error}") from error
    except storage.StorageError as error:
        raise ConfigurationError(f"cannot read the dataset {uri}: {error}") from error


def _lines(location: storage.Location, key: str, limit_bytes: int | None, uri: str) -> Iterator[tuple[str, str]]:
    text = _content(location, key, limit_bytes, uri).decode("utf-8", errors="replace")
    name = location.child(key).uri
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if line.strip():
            yield f"{name} line {number}", line


def _json_records(
    location: storage.Location, key: str, limit_bytes: int | None, uri: str, field: str
) -> Iterable[tuple[str, Any]]:
    for where, line in _lines(location, key, limit_bytes, uri):
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigurationError(f"{field}: {where} is not JSON: {error.msg}") from error
