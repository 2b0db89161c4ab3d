"""Calls through the client openapi-python-client generates, against a real gateway.

Run by tests/gateway/test_generated_clients.py with the generators' own
virtual environment (which has what the generated package needs: httpx,
attrs, python-dateutil): ``python call_gateway.py CLIENT_DIR URL API_KEY``.
Prints one JSON object of what it saw; each answer is checked to be the
generated model class, not a dict.
"""

from __future__ import annotations

import json
import sys

sys.path.insert(0, sys.argv[1])

from connbridge_gateway_client import AuthenticatedClient, Client
from connbridge_gateway_client.api.compute import compute, compute_on_adder
from connbridge_gateway_client.api.health import healthz, readyz
from connbridge_gateway_client.models import (
    AddressState,
    BackendReadiness,
    ComputeRequest,
    ComputeRequestForAdder,
    ComputeResponse,
    Health,
    Problem,
    Readiness,
)


def main(url: str, api_key: str) -> None:
    keyed = AuthenticatedClient(base_url=url, token=api_key, raise_on_unexpected_status=True)
    anonymous = Client(base_url=url, raise_on_unexpected_status=True)
    with keyed, anonymous:
        answer = compute.sync(client=keyed, body=ComputeRequest(payload=[5, 6]))
        assert isinstance(answer, ComputeResponse), answer
        refused = compute_on_adder.sync(client=keyed, body=ComputeRequestForAdder(payload=[5]))
        assert isinstance(refused, Problem), refused
        health = healthz.sync(client=anonymous)
        assert isinstance(health, Health), health
        ready = readyz.sync(client=anonymous)
        assert isinstance(ready, Readiness), ready
        adder = ready.backends["adder"]
        assert isinstance(adder, BackendReadiness), adder
        addresses = adder.addresses if isinstance(adder.addresses, list) else []
        assert all(isinstance(a, AddressState) for a in addresses), addresses
    print(
        json.dumps(
            {
                "result": answer.result,
                "backend": answer.backend,
                "refused": [refused.status, refused.type_],
                "health": health.status,
                "ready": ready.status,
                "adder": [adder.ready, adder.status.value, [a.state.value for a in addresses]],
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[2], sys.argv[3])
