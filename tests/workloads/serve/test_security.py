"""Bearer tokens, and artifacts that do not match their manifest or pin."""

from __future__ import annotations

import pathlib
import shutil
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.workloads.serve import raw
from tests.workloads.serve.conftest import Server

pytestmark = pytest.mark.slow
TOKEN = "s3cr3t-token-with-some-length"


def test_bearer_token_from_file(digits_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = Server(str(digits_dir), tmp_path / "auth.log", {"MAAS_AUTH_TOKEN_FILE": str(token_file)})
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/v2/health/live").status_code == 200
            assert http.get("/v2/health/ready").status_code == 200
            assert "maas_inference" in http.get("/metrics").text, "Prometheus scrapes without the token"
            for path in ("/v2", "/v2/models/digits", "/openapi.json", "/v1/models"):
                for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
                    response = http.get(path, headers=headers)
                    assert response.status_code == 401, (path, headers)
                    assert response.headers["www-authenticate"].startswith("Bearer")
                assert http.get(path, headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
            assert http.post("/v1/models/digits:predict", json={"instances": [[0] * 64]}).status_code == 401

        client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
        tensor = triton.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
        result = client.infer("digits", [tensor], headers={"Authorization": f"Bearer {TOKEN}"})
        assert result.as_numpy("logits").shape == (1, 10)
        with pytest.raises(triton.InferenceServerException):
            client.infer("digits", [tensor])
    finally:
        server.stop()
    assert TOKEN not in server.log()


def test_authentication_comes_before_any_work(digits_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """An unauthenticated client makes the server read, buffer and count nothing of its body."""
    server = Server(str(digits_dir), tmp_path / "auth-first.log", {"MAAS_AUTH_TOKEN": TOKEN})
    try:
        server.wait_ready()
        huge = {"Content-Length": str(100 << 20), "Content-Type": "application/json"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Expect": "100-continue"}):
            with raw.connect(server.port) as connection:
                connection.sendall(raw.head("POST", "/v2/models/digits/infer", {**huge, **headers}))
                refused = raw.read_response(connection)  # the body was never sent
                assert refused is not None and refused.status == 401, headers
                assert refused.headers["connection"] == "close"
                assert raw.read_response(connection) is None
        repeated = raw.head("GET", "/v2", {"Authorization": f"Bearer {TOKEN}"})
        repeated = repeated.replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        with raw.connect(server.port) as connection:
            connection.sendall(repeated)
            answer = raw.read_response(connection)
            assert answer is not None and answer.status == 400
            assert "authorization header appears more than once" in answer.body.decode()
        with raw.connect(server.port) as connection:  # authenticated, but larger than the limit
            connection.sendall(
                raw.head("POST", "/v2/models/digits/infer", {**huge, "Authorization": f"Bearer {TOKEN}"})
            )
            too_big = raw.read_response(connection)
            assert too_big is not None and too_big.status == 413
            assert too_big.headers["connection"] == "close"
        metrics = httpx.get(f"{server.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10).text
        assert 'maas_inference_requests_total{code="401"' not in metrics  # never reached the model's route
    finally:
        server.stop()
    assert TOKEN not in server.log()


def test_tampered_or_unpinned_artifacts_never_become_ready(digits_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(digits_dir, tampered)
    weights = tampered / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    servers = [
        Server(str(tampered), tmp_path / "tampered.log"),
        Server(str(digits_dir), tmp_path / "pinned.log", {"MAAS_MODEL_SHA256": "0" * 64}),
    ]
    reasons = ["model.safetensors does not match its sha256", "was pinned"]
    try:
        for server, reason in zip(servers, reasons, strict=True):
            server.wait_live()
            with httpx.Client(base_url=server.url, timeout=30) as http:
                deadline = time.monotonic() + 60
                while "loading" in (response := http.get("/v2/health/ready")).text:
                    assert time.monotonic() < deadline, "the model never finished loading"
                    time.sleep(0.1)
                assert response.status_code == 503
                assert reason in response.json()["reason"]
                infer = http.post("/v2/models/tampered/infer", json={"inputs": []})
                assert infer.status_code in (404, 503)
                assert http.get("/v2/health/live").json() == {"live": True}
                assert 'maas_inference_model_ready{model="' in http.get("/metrics").text
            assert reason in server.log()
    finally:
        for server in servers:
            server.stop()
