"""Rollouts under load from real pooled clients: no request fails while a server drains.

Two servers sit behind `Service` (a proxy that, like kube-proxy, pins each connection to the
endpoint it was opened to). Sync clients (`requests.Session`) and async pools
(`httpx.AsyncClient`, `aiohttp.ClientSession`) send inference requests back to back on
keep-alive connections while the first server is terminated, in the pod's real sequence and
in the readiness-driven one.

A request counts as failed when its client call raises (connection reset, server
disconnected, timeout) or its status is not 200 — every request sent, before and after the
signal. The clients run with their defaults and nothing retries on their behalf: urllib3
and httpcore discard a pooled connection the server has already closed before reusing it
(that is not a retry: no request was sent on it), and aiohttp retries only idempotent
methods, which an inference POST is not. A request lost by the server is therefore a
failure here.
"""

from __future__ import annotations

import asyncio
import pathlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
import httpx
import orjson
import pytest
import requests

from maas_operator.builders import modelservice as build
from maas_workloads import contract
from tests.workloads.serve import raw
from tests.workloads.serve.conftest import Server
from tests.workloads.serve.pods import TOKEN, operator_pod, server_env
from tests.workloads.serve.service import Service

pytestmark = pytest.mark.slow
BODY = orjson.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]})
PATH = "/v2/models/digits/infer"
THINK_SECONDS = 0.002
"""Between a response and the next request: back to back, well inside DRAIN_IDLE_SECONDS."""


@dataclass
class Outcome:
    client: str
    sent: float
    result: int | str
    """The status code, or the exception's type and message."""
    connection: str | None = None
    """The response's Connection header."""


@dataclass
class Load:
    headers: dict[str, str]
    url: str
    outcomes: list[Outcome] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def sync_client(self) -> None:
        with requests.Session() as session:
            while not self.stopping.is_set():
                sent = time.monotonic()
                try:
                    response = session.post(self.url + PATH, data=BODY, headers=self.headers, timeout=30)
                    self.outcomes.append(
                        Outcome("requests", sent, response.status_code, response.headers.get("connection"))
                    )
                except requests.RequestException as error:
                    self.outcomes.append(Outcome("requests", sent, f"{type(error).__name__}: {error}"))
                time.sleep(THINK_SECONDS)

    async def httpx_client(self, client: httpx.AsyncClient) -> None:
        while not self.stopping.is_set():
            sent = time.monotonic()
            try:
                response = await client.post(PATH, content=BODY, headers=self.headers)
                self.outcomes.append(Outcome("httpx", sent, response.status_code, response.headers.get("connection")))
            except httpx.HTTPError as error:
                self.outcomes.append(Outcome("httpx", sent, f"{type(error).__name__}: {error}"))
            await asyncio.sleep(THINK_SECONDS)

    async def aiohttp_client(self, session: aiohttp.ClientSession) -> None:
        while not self.stopping.is_set():
            sent = time.monotonic()
            try:
                async with session.post(self.url + PATH, data=BODY, headers=self.headers) as response:
                    await response.read()
                    self.outcomes.append(Outcome("aiohttp", sent, response.status, response.headers.get("connection")))
            except (aiohttp.ClientError, TimeoutError) as error:
                self.outcomes.append(Outcome("aiohttp", sent, f"{type(error).__name__}: {error}"))
            await asyncio.sleep(THINK_SECONDS)

    async def run(self, scenario: Callable[[], None]) -> None:
        """Three clients of each kind, the scenario in a thread meanwhile, then stop them all."""
        threads = [threading.Thread(target=self.sync_client, name=f"requests-{n}") for n in range(3)]
        for thread in threads:
            thread.start()
        async with (
            httpx.AsyncClient(base_url=self.url, timeout=30) as client,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        ):
            tasks = [asyncio.ensure_future(self.httpx_client(client)) for _ in range(3)]
            tasks += [asyncio.ensure_future(self.aiohttp_client(session)) for _ in range(3)]
            try:
                await asyncio.to_thread(scenario)
            finally:
                self.stopping.set()
                await asyncio.gather(*tasks)
                for thread in threads:
                    await asyncio.to_thread(thread.join, 60)


@pytest.fixture
def standby(digits_dir: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[Callable[[dict[str, str]], Server]]:
    """Start servers with the given environment; all are stopped at the end."""
    servers: list[Server] = []

    def start(env: dict[str, str]) -> Server:
        server = Server(str(digits_dir), tmp_path / f"server-{len(servers)}.log", env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _endpoint(server: Server) -> tuple[str, int]:
    return ("127.0.0.1", server.port)


def _accesses(server: Server) -> int:
    lines = [orjson.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return sum(1 for line in lines if line.get("path") == PATH and line.get("status") == 200)


def _check(load: Load, leaving: Server, staying: Server, service: Service, signalled: float) -> None:
    failures = [outcome for outcome in load.outcomes if outcome.result != 200]
    assert failures == [], f"{len(failures)} of {len(load.outcomes)} requests failed: {failures[:5]}"
    for client in ("requests", "httpx", "aiohttp"):
        after = [outcome for outcome in load.outcomes if outcome.client == client and outcome.sent > signalled]
        assert len(after) > 20, f"{client} sent only {len(after)} requests after the signal"
    assert any(outcome.connection == "close" for outcome in load.outcomes), "no response said Connection: close"
    assert "draining" in leaving.log() and "drained" in leaving.log()
    # Every request the clients saw answered was answered once, by one of the two servers.
    time.sleep(0.5)  # the staying server writes its access log every 0.1 s
    assert _accesses(leaving) + _accesses(staying) == len(load.outcomes)
    assert service.connections[_endpoint(staying)] > 3, "clients never reconnected to the other server"


async def test_pooled_clients_lose_nothing_when_a_pod_terminates(
    digits_dir: pathlib.Path, tmp_path: pathlib.Path, standby: Callable[[dict[str, str]], Server]
) -> None:
    """The pod's real sequence: deleted, dropped from endpoints, preStop sleep, SIGTERM, drain, exit."""
    template = operator_pod(digits_dir)["template"]["spec"]
    container = template["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = template["terminationGracePeriodSeconds"]
    assert pre_stop == build.PRE_STOP_SECONDS
    env = server_env(container, tmp_path / "cache")
    assert env[contract.ENV_DRAIN_DELAY_SECONDS] == "0"
    leaving, staying = standby(env), standby(env)
    for server in (leaving, staying):
        server.wait_ready()
    service = Service([_endpoint(leaving), _endpoint(staying)])
    load = Load({"authorization": f"Bearer {TOKEN}"}, service.url)
    marks: dict[str, float] = {}

    def rollout() -> None:
        time.sleep(1.5)  # every client has pooled connections to both pods
        marks["deleted"] = time.monotonic()
        service.remove(_endpoint(leaving))  # the endpoints controller, concurrently with preStop
        time.sleep(pre_stop)  # the kubelet runs the preStop hook, then signals the container
        leaving.process.send_signal(signal.SIGTERM)
        marks["exit_code"] = leaving.process.wait(grace - pre_stop)
        marks["exited"] = time.monotonic()
        time.sleep(1.0)

    try:
        await load.run(rollout)
    finally:
        service.close()
    assert marks["exit_code"] == 0, leaving.log()
    assert marks["exited"] - marks["deleted"] < grace
    _check(load, leaving, staying, service, marks["deleted"] + pre_stop)


async def test_pooled_clients_lose_nothing_when_readiness_drives_the_endpoints(
    standby: Callable[[dict[str, str]], Server],
) -> None:
    """Without a preStop hook: SIGTERM first; endpoints follow the readiness probe within the drain delay."""
    env = {contract.ENV_DRAIN_DELAY_SECONDS: str(contract.DEFAULT_DRAIN_DELAY_SECONDS)}
    leaving, staying = standby(env), standby(env)
    for server in (leaving, staying):
        server.wait_ready()
    service = Service([_endpoint(leaving), _endpoint(staying)])
    load = Load({}, service.url)
    marks: dict[str, float] = {}

    def ready() -> bool:
        try:
            return raw.get(leaving.port, contract.HEALTH_READY_PATH).status == 200
        except OSError:
            return False

    def rollout() -> None:
        time.sleep(1.5)
        service.watch_readiness(_endpoint(leaving), ready, period=0.2)
        marks["signalled"] = time.monotonic()
        leaving.process.send_signal(signal.SIGTERM)
        marks["exit_code"] = leaving.process.wait(contract.DEFAULT_DRAIN_SECONDS)
        time.sleep(1.0)

    try:
        await load.run(rollout)
    finally:
        service.close()
    assert marks["exit_code"] == 0, leaving.log()
    _check(load, leaving, staying, service, marks["signalled"])


def test_idle_connections_close_cleanly_and_responses_say_close_while_draining(
    standby: Callable[[dict[str, str]], Server],
) -> None:
    server = standby({contract.ENV_DRAIN_DELAY_SECONDS: "3"})
    server.wait_ready()
    idle = raw.connect(server.port)
    idle.sendall(raw.head("GET", contract.HEALTH_LIVE_PATH))
    before = raw.read_response(idle)
    assert before is not None and before.status == 200 and "connection" not in before.headers

    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with raw.connect(server.port) as fresh:  # still accepted during the drain delay, answered with close
        fresh.sendall(raw.head("POST", PATH, {"Content-Length": str(len(BODY))}) + BODY)
        during = raw.read_response(fresh)
        assert during is not None and during.status == 200
        assert during.headers["connection"] == "close"
        assert raw.read_response(fresh) is None  # and then closed by the server

    # The idle connection gets a FIN (an empty read, not a reset) while the server still runs.
    idle.settimeout(10)
    assert idle.recv(1) == b""
    assert server.process.poll() is None, "the idle connection was only closed when the server exited"
    idle.close()
    assert server.process.wait(30) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
