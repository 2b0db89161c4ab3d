"""API keys: hashes only, Bearer credentials, scopes, and which routes need a key."""

from __future__ import annotations

import pytest
from gateway_support import PROBLEM, backend_config, problem_type, serve_gateway, sha256_hex
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth import ANONYMOUS, KeyRing, Principal
from gateway.problems import Forbidden, Unauthorized
from gateway.settings import ApiKeySettings

pytestmark = pytest.mark.timeout(60)

ADMIN = "admin-key-0001"
ADDER_ONLY = "adder-only-key-0002"


def ring() -> KeyRing:
    return KeyRing(
        [
            ApiKeySettings(name="admin", sha256=sha256_hex(ADMIN), backends=("*",)),
            ApiKeySettings(name="adder", sha256=sha256_hex(ADDER_ONLY), backends=("adder",)),
        ]
    )


def test_no_keys_means_anonymous():
    keys = KeyRing([])
    assert not keys.enabled
    assert keys.authenticate(None) is ANONYMOUS
    assert keys.authenticate("Bearer whatever") is ANONYMOUS
    assert ANONYMOUS.may_use("anything")


def test_bearer_keys_and_scopes():
    keys = ring()
    admin = keys.authenticate(f"Bearer {ADMIN}")
    assert admin == Principal("admin", None)
    assert admin.may_use("other")
    scoped = keys.authenticate(f"bearer   {ADDER_ONLY} ")
    assert scoped.name == "adder"
    assert scoped.may_use("adder")
    assert not scoped.may_use("other")
    with pytest.raises(Forbidden):
        scoped.require("other")


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", f"Basic {ADMIN}", f"Token {ADMIN}", "Bearer nope"]
)
def test_refused_credentials(header):
    with pytest.raises(Unauthorized) as info:
        ring().authenticate(header)
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer ")
    assert ADMIN not in str(info.value)


def test_access_token_for_websockets():
    keys = ring()
    assert keys.authenticate(access_token=ADMIN).name == "admin"
    assert keys.authenticate(f"Bearer {ADDER_ONLY}", access_token=ADMIN).name == "adder"
    with pytest.raises(Unauthorized):
        keys.authenticate(access_token="wrong")


def test_non_ascii_key():
    key = "clé-🔑"
    keys = KeyRing([ApiKeySettings(name="u", sha256=sha256_hex(key))])
    # Starlette hands header values over as latin-1 text of the raw bytes.
    raw_header = ("Bearer " + key).encode().decode("latin-1")
    assert keys.authenticate(raw_header).name == "u"
    assert keys.authenticate(access_token=key).name == "u"


def test_repr_shows_no_hash():
    key = ApiKeySettings(name="ci", sha256=sha256_hex(ADMIN))
    assert sha256_hex(ADMIN) not in repr(key)
    assert sha256_hex(ADMIN) not in repr(ring())


@pytest.fixture(scope="module")
def demo(start_shared_backend):
    return start_shared_backend("demo")


@pytest.fixture
def settings(demo, tmp_path):
    return {
        "gateway": {"default_backend": "adder"},
        "backends": {
            "adder": backend_config(demo, tmp_path),
            "other": backend_config(demo, tmp_path),
        },
        "auth": {
            "keys": [
                {"name": "admin", "sha256": sha256_hex(ADMIN), "backends": ["*"]},
                {"name": "adder", "sha256": sha256_hex(ADDER_ONLY), "backends": ["adder"]},
            ]
        },
    }


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


async def test_401_without_or_with_a_bad_key(settings):
    async with serve_gateway(settings) as gw:
        for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {ADMIN}"}):
            for method, path in [
                ("POST", "/compute"),
                ("POST", "/backends/adder/compute"),
                ("POST", "/backends/ghost/compute"),
                ("POST", "/compute/batch"),
                ("GET", "/backends"),
                ("GET", "/metrics"),
            ]:
                response = await gw.client.request(
                    method, path, json={"payload": [1, 2]}, headers=headers
                )
                assert response.status_code == 401, (path, headers)
                assert response.headers["content-type"] == PROBLEM
                assert response.json()["type"] == problem_type("unauthorized")
                assert response.headers["www-authenticate"].startswith("Bearer")


async def test_401_comes_before_reading_the_body(settings):
    async with serve_gateway(settings) as gw:
        response = await gw.client.post(
            "/compute", content=b"x" * 2_000_000, headers={"content-type": "text/plain"}
        )
        assert response.status_code == 401


async def test_scopes(settings):
    async with serve_gateway(settings) as gw:
        post = gw.client.post
        ok = await post("/compute", json={"payload": [1, 2]}, headers=bearer(ADDER_ONLY))
        assert ok.json()["result"] == 3
        ok = await post(
            "/backends/adder/compute", json={"payload": [1, 2]}, headers=bearer(ADDER_ONLY)
        )
        assert ok.status_code == 200
        for path, body in [
            ("/compute", {"backend": "other", "payload": [1, 2]}),
            ("/backends/other/compute", {"payload": [1, 2]}),
            # Out of scope is refused before existence is checked: no probing.
            ("/compute", {"backend": "ghost", "payload": [1, 2]}),
            ("/backends/ghost/compute", {"payload": [1, 2]}),
        ]:
            response = await post(path, json=body, headers=bearer(ADDER_ONLY))
            assert response.status_code == 403, path
            assert response.json()["type"] == problem_type("forbidden")
        response = await post(
            "/compute", json={"backend": "ghost", "payload": 1}, headers=bearer(ADMIN)
        )
        assert response.status_code == 404
        response = await post(
            "/compute/batch",
            json={"requests": [{"payload": [1, 2]}, {"backend": "other", "payload": [1, 2]}]},
            headers=bearer(ADDER_ONLY),
        )
        results = response.json()["results"]
        assert results[0]["result"] == 3
        assert results[1]["error"]["status"] == 403


async def test_backends_listing_follows_the_scope(settings):
    async with serve_gateway(settings) as gw:
        listing = await gw.client.get("/backends", headers=bearer(ADDER_ONLY))
        assert [b["name"] for b in listing.json()["backends"]] == ["adder"]
        listing = await gw.client.get("/backends", headers=bearer(ADMIN))
        assert [b["name"] for b in listing.json()["backends"]] == ["adder", "other"]


async def test_probes_need_no_key_and_metrics_do(settings):
    async with serve_gateway(settings) as gw:
        assert (await gw.client.get("/healthz")).status_code == 200
        assert (await gw.client.get("/readyz")).status_code == 200
        assert (await gw.client.get("/openapi.json")).status_code == 200
        assert (await gw.client.get("/metrics")).status_code == 401
        assert (await gw.client.get("/metrics", headers=bearer(ADDER_ONLY))).status_code == 200
    settings["gateway"]["metrics_public"] = True
    async with serve_gateway(settings) as gw:
        assert (await gw.client.get("/metrics")).status_code == 200


async def test_openapi_declares_bearer_auth(settings):
    async with serve_gateway(settings) as gw:
        document = (await gw.client.get("/openapi.json")).json()
        assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
        paths = document["paths"]
        assert paths["/compute"]["post"]["security"] == [{"apiKey": []}]
        assert "401" in paths["/compute"]["post"]["responses"]
        assert "security" not in paths["/healthz"]["get"]
        assert "security" not in paths["/readyz"]["get"]


async def test_metrics_follow_the_scope(settings):
    async with serve_gateway(settings) as gw:
        for backend in ("adder", "other"):
            response = await gw.client.post(
                f"/backends/{backend}/compute", json={"payload": [1, 2]}, headers=bearer(ADMIN)
            )
            assert response.status_code == 200
        everything = (await gw.client.get("/metrics", headers=bearer(ADMIN))).text
        assert 'backend="other"' in everything
        assert 'backend="adder"' in everything
        scoped = (await gw.client.get("/metrics", headers=bearer(ADDER_ONLY))).text
        assert 'backend="adder"' in scoped
        assert "other" not in scoped
        # Gateway-wide series stay (no backend label, or an empty one).
        assert "connbridge_websocket_connections" in scoped
        assert 'route="/metrics",status="200"' in scoped


async def test_requests_that_reach_no_backend_are_labelled_dash(settings):
    """401, 403 and 404 before a backend is chosen: ``backend="-"``, never ``""`` or a name."""
    async with serve_gateway(settings) as gw:
        refused = [
            ("/backends/other/compute", {}, 401),  # no key
            ("/backends/other/compute", bearer("wrong"), 401),
            ("/backends/other/compute", bearer(ADDER_ONLY), 403),  # out of its scope
            ("/backends/ghost/compute", bearer(ADMIN), 404),  # no such backend
            ("/backends/ghost-2/compute", bearer(ADMIN), 404),
        ]
        for path, headers, status in refused:
            response = await gw.client.post(path, json={"payload": [1, 2]}, headers=headers)
            assert response.status_code == status, path
        everything = samples((await gw.client.get("/metrics", headers=bearer(ADMIN))).text)
        scoped = samples((await gw.client.get("/metrics", headers=bearer(ADDER_ONLY))).text)

    route = "/backends/{name}/compute"
    for seen in (everything, scoped):
        requests = [
            (labels, value)
            for name, labels, value in seen
            if name == "connbridge_requests_total" and labels["route"] == route
        ]
        assert {labels["status"]: value for labels, value in requests} == {
            "401": 2,
            "403": 1,
            "404": 2,
        }
        assert {labels["backend"] for labels, _ in requests} == {"-"}
        backends = {labels["backend"] for _, labels, _ in seen if "backend" in labels}
        # No empty label anywhere, and no series per name a caller tried.
        assert "" not in backends
        assert not [name for name in backends if "ghost" in name]
    # The scoped key still learns no other backend's name.
    assert "other" not in {labels.get("backend") for _, labels, _ in scoped}
    assert "other" in {labels.get("backend") for _, labels, _ in everything}


async def test_a_scoped_key_never_learns_another_backends_name(settings):
    settings["gateway"]["default_backend"] = "other"
    async with serve_gateway(settings) as gw:
        response = await gw.client.post(
            "/compute", json={"payload": [1, 2]}, headers=bearer(ADDER_ONLY)
        )
        assert response.status_code == 403
        assert response.json()["type"] == problem_type("forbidden")
        assert "other" not in response.text
        response = await gw.client.post(
            "/compute/batch", json={"requests": [{"payload": [1, 2]}]}, headers=bearer(ADDER_ONLY)
        )
        assert response.json()["results"][0]["error"]["status"] == 403
        assert "other" not in response.text
        for path in ("/backends", "/metrics"):
            response = await gw.client.get(path, headers=bearer(ADDER_ONLY))
            assert response.status_code == 200
            assert "other" not in response.text, path
        response = await gw.client.post("/compute", json={"payload": [1, 2]}, headers=bearer(ADMIN))
        assert response.json()["backend"] == "other"
