"""Model URIs: local paths, file://, pvc://, http(s):// and s3:// (moto in server mode on 127.0.0.1)."""

from __future__ import annotations

import functools
import http.server
import pathlib
import threading
from collections.abc import Iterator

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from maas_workloads import storage
from maas_workloads.artifact import verify
from maas_workloads.serve.sources import SourceError, model_name_of, resolve
from tests.workloads.serve.conftest import Server

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("s3://models/digits", "digits"),
        ("s3://models/digits/", "digits"),
        ("s3://bucket", "bucket"),
        ("pvc://claim/a/b", "b"),
        ("/srv/models/my%20model", "my%20model"),
        ("https://example.com/models/my%20model", "my model"),
    ],
)
def test_default_model_name_is_the_last_segment(uri: str, name: str) -> None:
    assert model_name_of(uri) == name


def test_local_file_and_pvc_uris(digits_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    assert resolve(str(digits_dir), tmp_path) == digits_dir
    assert resolve(f"file://{digits_dir}", tmp_path) == digits_dir
    claim = tmp_path / "mnt" / "artifacts" / "team"
    claim.mkdir(parents=True)
    (claim / "digits").symlink_to(digits_dir)
    assert resolve("pvc://artifacts/team/digits", tmp_path, pvc_root=tmp_path / "mnt") == claim / "digits"


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("gs://bucket/model", "unsupported scheme 'gs'"),
        ("file://host/path", "names host 'host'"),
        ("pvc:///path", "needs a claim name"),
        ("/does/not/exist", "not a directory"),
    ],
)
def test_bad_uris_name_the_fix(uri: str, fragment: str, tmp_path: pathlib.Path) -> None:
    with pytest.raises(SourceError, match=fragment):
        resolve(uri, tmp_path)


@pytest.fixture
def http_artifacts(digits_dir: pathlib.Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(digits_dir.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_artifact_is_fetched_manifest_last_and_verifies(http_artifacts: str, tmp_path: pathlib.Path) -> None:
    local = resolve(f"{http_artifacts}/digits/", tmp_path / "cache")
    assert local == tmp_path / "cache" / "digits"
    verify(local)
    with pytest.raises(SourceError, match="404"):
        resolve(f"{http_artifacts}/missing", tmp_path / "cache")
    assert not (tmp_path / "cache" / "missing" / "manifest.json").exists()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.mark.slow
def test_s3_model_is_served(
    s3_endpoint: str, digits_dir: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3").create_bucket(Bucket="models")
    storage.open_location("s3://models").publish_directory(digits_dir, "team/digits", "manifest.json")

    with pytest.raises(SourceError, match="not a complete artifact"):
        resolve("s3://models/team/other", tmp_path / "cache")

    server = Server(
        "s3://models/team/digits", tmp_path / "s3.log", {**env, "MAAS_MODEL_CACHE_DIR": str(tmp_path / "c")}
    )
    try:
        server.wait_ready()
        request = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
        response = httpx.post(f"{server.url}/v2/models/digits/infer", json=request, timeout=30)
        assert response.status_code == 200, response.text
        assert (tmp_path / "c" / "digits" / "manifest.json").is_file()
    finally:
        server.stop()
