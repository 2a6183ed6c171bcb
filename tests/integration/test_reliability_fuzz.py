"""Schema-driven fuzzing of the gateway's OpenAPI (schemathesis): no 500, no hang.

Every operation the gateway publishes in /openapi.json gets a bounded number of generated
requests, valid and invalid, against the real gateway in front of the echo model. Each must
be answered (within `CALL_TIMEOUT_S`) with a status below 500, and the gateway must still be
healthy afterwards.
"""

from __future__ import annotations

import collections

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 20
"""Bounded, so the whole fuzz takes seconds, not minutes."""
CALL_TIMEOUT_S = 20.0


def test_no_generated_request_gets_a_500_or_hangs(echo_gateway: str) -> None:
    schema = schemathesis.openapi.from_url(f"{echo_gateway}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path == "/v1/chat/completions" for op in operations)
    failures: list[str] = []
    statuses: list[int] = []

    for operation in operations:

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def fuzz(data: st.DataObject) -> None:
            case = data.draw(operation.as_strategy())
            # Most generated model names are unknown (404); half the time name the served
            # one, so the fuzz also reaches the generation paths.
            if isinstance(case.body, dict) and "model" in case.body and data.draw(st.booleans()):
                case.body["model"] = "echo"
            response = case.call(base_url=echo_gateway, timeout=CALL_TIMEOUT_S)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.body!r:.300} -> "
                                f"{response.status_code} {response.text[:300]}")

        fuzz()

    assert not failures, "\n".join(failures[:10])
    assert 200 in statuses, f"nothing was served: {sorted(collections.Counter(statuses).items())}"
    assert httpx.get(f"{echo_gateway}/health", timeout=5).status_code == 200
