from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from tests.operator.emulator import Cluster, OperatorProcess, running_cluster, write_kubeconfig


@pytest.fixture
async def cluster(tmp_path: pathlib.Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path) as emulated:
        yield emulated


class ProgressServer:
    """Stands in for the heads' progress endpoints: /{namespace}/{name} -> the report set here."""

    def __init__(self) -> None:
        self.reports: dict[str, dict[str, Any]] = {}
        self.url_template = ""

    async def handle(self, request: web.Request) -> web.Response:
        report = self.reports.get(request.match_info["name"])
        return web.json_response(report) if report is not None else web.Response(status=503)


@pytest.fixture
async def progress_server() -> AsyncIterator[ProgressServer]:
    server = ProgressServer()
    app = web.Application()
    app.router.add_get("/{namespace}/{name}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url_template = f"http://127.0.0.1:{port}/{{namespace}}/{{name}}"
    yield server
    await runner.cleanup()


@pytest.fixture
def operator(
    cluster: Cluster, progress_server: ProgressServer, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> Iterator[OperatorProcess]:
    kubeconfig = write_kubeconfig(cluster.url, tmp_path)
    marker = request.node.get_closest_marker("operator_env")
    process = OperatorProcess(
        kubeconfig,
        tmp_path / "operator.log",
        {"MAAS_OPERATOR_PROGRESS_URL_TEMPLATE": progress_server.url_template, **(marker.kwargs if marker else {})},
    )
    process.start()
    yield process
    process.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print("---- operator log (tail) ----")
        print(process.logs()[-20000:])


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
