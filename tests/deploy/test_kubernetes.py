"""deploy/kubernetes: schema validation (kubernetes-validate, offline) and wiring.

Schema validation says each object is well formed; the other tests say the
objects fit together and fit the image: selectors select the pods, the
Secret has the keys the pods read, the configuration loads with the
gateway's own loader and addresses the headless Service, the probes hit the
gateway's health routes, the pods run as the image's user.
"""

from __future__ import annotations

import copy
import json
import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.settings import load_settings, read_authkeys

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))

#: The oldest Kubernetes the manifests are meant for, and the newest schema shipped.
VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]

GATEWAY = {"app.kubernetes.io/name": "connbridge", "app.kubernetes.io/component": "gateway"}
BACKEND = {"app.kubernetes.io/name": "adder", "app.kubernetes.io/component": "backend"}


def load_all() -> list[tuple[Path, dict[str, Any]]]:
    documents = []
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append((path, document))
    return documents


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [
        doc for _, doc in load_all() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to reach the network fails the test: the schemas must be local."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


def test_the_manifests_are_all_there() -> None:
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in load_all())
    assert kinds == [
        ("ConfigMap", "connbridge-config"),
        ("Deployment", "adder"),
        ("Deployment", "connbridge"),
        ("HorizontalPodAutoscaler", "connbridge"),
        ("NetworkPolicy", "adder"),
        ("PodDisruptionBudget", "connbridge"),
        ("Secret", "connbridge-secrets"),
        ("Service", "adder"),
        ("Service", "connbridge"),
    ]


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates(path: Path, version: str) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert documents
    for document in documents:
        # strict: a misspelt or misplaced field is an error, not ignored.
        kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.usefixtures("no_network")
def test_validation_rejects_a_broken_manifest() -> None:
    # Proves the validation above can fail: a misplaced field and a wrong type.
    deployment = copy.deepcopy(find("Deployment", "connbridge"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["path"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(find("Deployment", "connbridge"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_gateway_deployment() -> None:
    deployment = find("Deployment", "connbridge")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"] == GATEWAY
    assert spec["template"]["metadata"]["labels"] == GATEWAY
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # No CONNBRIDGE_SERVICE_HOST & co. among the gateway's CONNBRIDGE_* settings.
    assert pod["enableServiceLinks"] is False
    (container,) = containers(deployment)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # SIGTERM must leave time for the preStop delay and the gateway's own grace.
    config = gateway_config()
    assert pod["terminationGracePeriodSeconds"] > config["gateway"]["shutdown_grace"] + 5


def test_pods_run_as_the_images_user() -> None:
    users = [rest for keyword, rest in _dockerfile() if keyword == "USER"]
    uid, gid = (int(part) for part in users[-1].split(":"))
    for name in ("connbridge", "adder"):
        context = find("Deployment", name)["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)


def _dockerfile() -> list[tuple[str, str]]:
    result = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        keyword, _, rest = line.partition(" ")
        if keyword.isupper():
            result.append((keyword, rest.strip()))
    return result


def test_services_select_the_pods() -> None:
    gateway = find("Service", "connbridge")["spec"]
    assert gateway["selector"] == GATEWAY
    assert gateway["ports"][0]["targetPort"] == "http"
    backend = find("Service", "adder")["spec"]
    assert backend["clusterIP"] == "None", "the backend Service must be headless"
    assert backend["selector"] == BACKEND
    assert find("Deployment", "adder")["spec"]["template"]["metadata"]["labels"] == BACKEND


def test_disruption_budget_and_autoscaler_target_the_gateway() -> None:
    pdb = find("PodDisruptionBudget", "connbridge")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"] == GATEWAY
    assert pdb["spec"]["minAvailable"] < find("Deployment", "connbridge")["spec"]["replicas"]
    hpa = find("HorizontalPodAutoscaler", "connbridge")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "connbridge",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]


def test_only_the_gateway_may_reach_the_backend() -> None:
    policy = find("NetworkPolicy", "adder")["spec"]
    assert policy["podSelector"]["matchLabels"] == BACKEND
    (rule,) = policy["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": GATEWAY}}]


def gateway_config() -> dict[str, Any]:
    configmap = find("ConfigMap", "connbridge-config")
    return tomllib.loads(configmap["data"]["connbridge.toml"])


def _mounts(deployment: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """mountPath -> (volume name, volume) of the first container."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return {
        m["mountPath"]: (m["name"], volumes[m["name"]])
        for m in containers(deployment)[0]["volumeMounts"]
    }


def test_config_and_secrets_are_where_the_image_and_the_config_look() -> None:
    deployment = find("Deployment", "connbridge")
    mounts = _mounts(deployment)
    secret = find("Secret", "connbridge-secrets")["stringData"]

    # The image's ENTRYPOINT reads /etc/connbridge/connbridge.toml.
    _, config_volume = mounts["/etc/connbridge"]
    assert config_volume["configMap"]["name"] == "connbridge-config"
    assert "connbridge.toml" in find("ConfigMap", "connbridge-config")["data"]

    # authkey_file points into the mounted Secret, at a key it has.
    authkey_file = Path(gateway_config()["backends"]["adder"]["authkey_file"])
    _, secret_volume = mounts[str(authkey_file.parent)]
    assert secret_volume["secret"]["secretName"] == "connbridge-secrets"
    (item,) = secret_volume["secret"]["items"]
    assert item["path"] == authkey_file.name
    assert item["key"] in secret

    # Every secretKeyRef names a key the Secret has.
    for name in ("connbridge", "adder"):
        for container in containers(find("Deployment", name)):
            for env in container.get("env", []):
                ref = env["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "connbridge-secrets"
                assert ref["key"] in secret, env
    # The backend and the gateway share one authkey.
    (backend,) = containers(find("Deployment", "adder"))
    (authkey_env,) = backend["env"]
    assert authkey_env["valueFrom"]["secretKeyRef"]["key"] == item["key"]


def test_config_addresses_the_headless_service_by_dns() -> None:
    address = gateway_config()["backends"]["adder"]["address"]
    host, _, port = address.rpartition(":")
    service = find("Service", "adder")
    assert host == f"{service['metadata']['name']}.default.svc.cluster.local"
    (service_port,) = service["spec"]["ports"]
    assert int(port) == service_port["port"]
    (backend,) = containers(find("Deployment", "adder"))
    assert backend["args"][backend["args"].index("--address") + 1] == f"0.0.0.0:{port}"


def test_config_loads_with_the_gateways_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap's file plus the Secret's environment, as the pod gets them."""
    secret = find("Secret", "connbridge-secrets")["stringData"]
    text = find("ConfigMap", "connbridge-config")["data"]["connbridge.toml"]
    authkey_file = gateway_config()["backends"]["adder"]["authkey_file"]
    key_file = tmp_path / "adder-authkey"
    key_file.write_text(secret["adder-authkey"])
    config = tmp_path / "connbridge.toml"
    config.write_text(text.replace(authkey_file, str(key_file)))
    (gateway_container,) = containers(find("Deployment", "connbridge"))
    for env in gateway_container["env"]:
        monkeypatch.setenv(env["name"], secret[env["valueFrom"]["secretKeyRef"]["key"]])

    settings = load_settings(config)

    assert list(settings.backends) == ["adder"]
    assert read_authkeys(settings)["adder"] == secret["adder-authkey"].encode()
    keys = json.loads(secret["api-keys"])
    assert [k.name for k in settings.auth.keys] == [k["name"] for k in keys]
    # Keys are configured, so the gateway may listen on 0.0.0.0 in the pod.
    assert settings.auth.keys
