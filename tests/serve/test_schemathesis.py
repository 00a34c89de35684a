"""Issue 8.2: property-based requests generated from the service's own OpenAPI document never get a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from serve.app import create_app
from tests.support.service import ADMIN_KEY, API_KEY, LiveServer

EXAMPLES_PER_OPERATION = 12


@pytest.mark.slow
def test_no_server_errors_for_generated_requests(make_settings, artifacts):
    fast_probes = make_settings(probe_max_steps=4, probe_bisection_steps=2, probe_time_limit_s=20)
    with LiveServer(create_app(fast_probes)) as live:
        live.wait_ready()
        schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/search", "/search/batch", "/probe", "/info", "/admin/reload"}
        keys = {"X-API-Key": API_KEY, "X-Admin-Key": ADMIN_KEY}
        for operation in operations:

            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def check(case):
                response = case.call(base_url=live.url, headers=keys, timeout=30)
                case.validate_response(response, checks=[not_a_server_error])

            check()
