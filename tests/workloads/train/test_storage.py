"""storage.py against a real directory and a real S3-compatible server (moto on 127.0.0.1)."""

from __future__ import annotations

import pathlib
import socket

import pytest

from maas_workloads.storage import (
    LocalLocation,
    Location,
    ObjectNotFoundError,
    StorageConfigError,
    StorageError,
    StorageUnavailableError,
    open_location,
)
from maas_workloads.storage_s3 import S3Location
from tests.workloads.train.conftest import S3Server


@pytest.fixture(params=["file", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Location:
    if request.param == "file":
        return open_location((tmp_path / "store").as_uri())
    bucket = request.getfixturevalue("bucket")
    return open_location(f"s3://{bucket}/runs/one")


def _tree(root: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_objects_round_trip(location: Location) -> None:
    location.write_bytes("a/b.txt", b"one")
    location.write_bytes("a/c/d.bin", b"two")
    location.write_bytes("e.txt", b"three")
    location.write_bytes("a/user.tmp", b"a user's file that merely ends in .tmp")
    assert location.read_bytes("a/b.txt") == b"one"
    assert location.exists("a/c/d.bin")
    assert not location.exists("a/missing")
    assert location.list_keys() == ["a/b.txt", "a/c/d.bin", "a/user.tmp", "e.txt"]
    assert location.list_keys("a") == ["a/b.txt", "a/c/d.bin", "a/user.tmp"]
    assert location.child("a").list_keys() == ["b.txt", "c/d.bin", "user.tmp"]
    assert location.child("a").read_bytes("c/d.bin") == b"two"
    location.write_bytes("a/b.txt", b"replaced")
    assert location.read_bytes("a/b.txt") == b"replaced"
    location.delete_prefix("a")
    assert location.list_keys() == ["e.txt"]
    location.delete_prefix("never-written")
    with pytest.raises(ObjectNotFoundError):
        location.read_bytes("a/b.txt")


def test_directory_publish_and_download(location: Location, tmp_path: pathlib.Path) -> None:
    first = _tree(
        tmp_path / "v1", {"model.pt": b"m1", "old-only.bin": b"x", "sub/w.bin": b"w1", "manifest.json": b"{1}"}
    )
    location.publish_directory(first, "model", marker="manifest.json")
    assert location.list_keys("model") == [
        "model/manifest.json",
        "model/model.pt",
        "model/old-only.bin",
        "model/sub/w.bin",
    ]

    second = _tree(tmp_path / "v2", {"model.pt": b"m2", "sub/w.bin": b"w2", "manifest.json": b"{2}"})
    location.publish_directory(second, "model", marker="manifest.json")
    assert location.list_keys("model") == ["model/manifest.json", "model/model.pt", "model/sub/w.bin"]

    downloaded = tmp_path / "down"
    keys = location.download_directory("model", downloaded)
    assert sorted(keys) == ["manifest.json", "model.pt", "sub/w.bin"]
    assert (downloaded / "model.pt").read_bytes() == b"m2"
    assert (downloaded / "sub/w.bin").read_bytes() == b"w2"
    with pytest.raises(ObjectNotFoundError):
        location.download_directory("nothing-here", tmp_path / "empty")


def test_publish_refuses_a_directory_without_its_marker(location: Location, tmp_path: pathlib.Path) -> None:
    source = _tree(tmp_path / "src", {"model.pt": b"m"})
    with pytest.raises(StorageError, match=r"manifest\.json"):
        location.publish_directory(source, "model", marker="manifest.json")
    assert location.list_keys() == []


class _RecordingS3(S3Location):
    """A real S3 location that notes, at every upload, whether the marker was visible."""

    def __init__(self, bucket: str, prefix: str) -> None:
        super().__init__(bucket, prefix)
        self.uploads: list[tuple[str, bool]] = []

    def upload_file(self, source: pathlib.Path, key: str) -> None:
        self.uploads.append((key, self.exists("model/manifest.json")))
        super().upload_file(source, key)


def test_s3_publish_hides_the_old_marker_first_and_uploads_the_new_one_last(
    bucket: str, tmp_path: pathlib.Path
) -> None:
    store = _RecordingS3(bucket, "p")
    store.publish_directory(
        _tree(tmp_path / "v1", {"a": b"1", "b": b"1", "manifest.json": b"1"}), "model", "manifest.json"
    )
    store.uploads.clear()
    store.publish_directory(
        _tree(tmp_path / "v2", {"a": b"2", "b": b"2", "manifest.json": b"2"}), "model", "manifest.json"
    )
    assert store.uploads == [("model/a", False), ("model/b", False), ("model/manifest.json", False)]
    assert store.read_bytes("model/manifest.json") == b"2"


def test_local_publish_never_exposes_staging(tmp_path: pathlib.Path) -> None:
    store = LocalLocation(tmp_path / "store")
    (tmp_path / "store" / ".staging-model-abc").mkdir(parents=True)
    (tmp_path / "store" / ".staging-model-abc" / "half.bin").write_bytes(b"half")
    store.publish_directory(_tree(tmp_path / "v1", {"a": b"1", "manifest.json": b"1"}), "model", "manifest.json")
    assert store.list_keys() == ["model/a", "model/manifest.json"]


def test_keys_cannot_escape_the_location(location: Location) -> None:
    with pytest.raises(StorageConfigError, match=r"\.\."):
        location.write_bytes("../outside", b"x")


def test_uri_parsing() -> None:
    assert isinstance(open_location("file:///data/x"), LocalLocation)
    assert open_location("/data/x").uri == "file:///data/x"
    s3 = open_location("s3://bucket/a/b/")
    assert isinstance(s3, S3Location)
    assert (s3.bucket, s3.prefix, s3.uri) == ("bucket", "a/b", "s3://bucket/a/b")
    assert s3.child("c").uri == "s3://bucket/a/b/c"
    for bad in ("", "gs://bucket/x", "relative/path", "file://host/x", "s3:///no-bucket"):
        with pytest.raises(StorageConfigError):
            open_location(bad)


def test_unreachable_s3_is_an_infrastructure_error(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageUnavailableError, match="s3://bucket/x"):
        open_location("s3://bucket/x").check()


def test_missing_bucket_and_missing_credentials_are_configuration_errors(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(StorageConfigError, match="NoSuchBucket"):
        open_location("s3://no-such-bucket/x").check()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageConfigError, match="AWS_ACCESS_KEY_ID"):
        open_location("s3://bucket/x").check()
