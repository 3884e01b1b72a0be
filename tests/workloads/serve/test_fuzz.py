"""Fuzz every operation of the OpenAPI description the server itself serves: no 5xx, ever."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.workloads.serve.conftest import Server

pytestmark = pytest.mark.slow
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_fuzzed_requests_never_get_a_server_error(digits_server: Server) -> None:
    document = httpx.get(f"{digits_server.url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 15

    strategy = st.one_of(*(operation.as_strategy() for operation in operations))

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=strategy)
    def call(case: schemathesis.Case) -> None:
        response = case.call(base_url=digits_server.url, timeout=30)
        case.validate_response(response, checks=CHECKS)

    call()
    assert httpx.get(f"{digits_server.url}/v2/health/ready", timeout=30).json() == {"ready": True}
