"""k8s/: every overlay renders (kustomize) and validates offline against a current Kubernetes
(kubernetes-validate --strict); the site layout the operators' README promises holds."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from node.config import NodeConfig
from tests.ops.tools import (
    DASHBOARDS,
    K8S,
    KUBERNETES_VERSION,
    MONITORING,
    OVERLAYS,
    SITES,
    Manifest,
    documents,
    render,
    run,
    tool,
)

CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
"""prometheus-operator's kinds: not in Kubernetes' schemas, checked against SCHEMAS below."""
PARTNER_RANGE = ipaddress.ip_network("203.0.113.0/24")
"""partner-c's egress addresses, as the in-house overlays list them."""


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return {name: render(path) for name, path in {**OVERLAYS, "monitoring": MONITORING}.items()}


def validate(stream: str, directory: Path) -> list[str]:
    """kubernetes-validate --strict on a YAML stream: its errors, and its warnings about kinds
    it has no schema for (other than prometheus-operator's)."""
    path = directory / "manifests.yaml"
    path.write_text(stream)
    done = run(tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path))
    problems = [line for line in done.stdout.splitlines() if not line.startswith("INFO ")]
    problems = [p for p in problems if not any(f"kind {k} " in p for k in CUSTOM_KINDS)]
    if done.returncode != 0 and not problems:
        problems.append(f"exit code {done.returncode}: {done.stderr.strip()}")
    return problems


@pytest.mark.parametrize("name", [*SITES, "monitoring"])
def test_every_overlay_renders_and_validates_strictly(
    rendered: dict[str, str], name: str, tmp_path: Path
) -> None:
    assert validate(rendered[name], tmp_path) == []
    kinds = [doc["kind"] for doc in documents(rendered[name])]
    assert kinds, f"{name} renders nothing"


def _find(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _container(docs: list[Manifest], kind: str, name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = _find(docs, kind, name)["spec"]["template"]["spec"][
        "containers"
    ]
    return containers[0]


@pytest.mark.parametrize(
    ("what", "breakage"),
    [
        ("a misspelt field", lambda c: c.update(readynessProbe=c.pop("readinessProbe"))),
        ("a wrong type", lambda c: c["ports"][0].update(containerPort="eight thousand")),
        ("a missing required field", lambda c: c.pop("name")),
    ],
)
def test_a_broken_manifest_fails_validation(
    rendered: dict[str, str], tmp_path: Path, what: str, breakage: Any
) -> None:
    docs = documents(rendered["site-a"])
    breakage(_container(docs, "StatefulSet", "callmesh"))
    problems = validate(yaml.safe_dump_all(docs), tmp_path)
    assert any("statefulset/callmesh" in p for p in problems), (what, problems)


def test_an_unknown_kind_fails_validation(rendered: dict[str, str], tmp_path: Path) -> None:
    docs = documents(rendered["site-b"])
    _find(docs, "StatefulSet", "etcd")["kind"] = "StatefullSet"
    assert any("StatefullSet" in p for p in validate(yaml.safe_dump_all(docs), tmp_path))


# prometheus-operator's resources, as far as these manifests use them (strict: no other field).
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
    "properties": {
        "record": {"type": "string"},
        "alert": {"type": "string"},
        "expr": {"type": "string"},
        "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "jobLabel": {"type": "string"},
                    "selector": _SELECTOR,
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["port"],
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": {"type": "string"},
                                "scrapeTimeout": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string"},
                                "interval": {"type": "string"},
                                "rules": {"type": "array", "items": _RULE},
                            },
                        },
                    }
                },
            },
        },
    },
}


def _custom(rendered: dict[str, str]) -> Iterator[Manifest]:
    for stream in rendered.values():
        yield from (d for d in documents(stream) if d["kind"] in CUSTOM_KINDS)


def test_prometheus_operator_resources_match_their_schemas(rendered: dict[str, str]) -> None:
    found = list(_custom(rendered))
    assert {d["kind"] for d in found} == CUSTOM_KINDS
    for doc in found:
        jsonschema.validate(doc, SCHEMAS[doc["kind"]])
    broken = json.loads(json.dumps(found[0]))
    broken["spec"]["endpoint"] = broken["spec"].pop(next(iter(broken["spec"])))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMAS[broken["kind"]])


@pytest.mark.parametrize("site", SITES)
def test_each_site_runs_three_etcd_members_spread_over_hosts_and_kept_in_quorum(
    rendered: dict[str, str], site: str
) -> None:
    docs = documents(rendered[site])
    etcd = _find(docs, "StatefulSet", "etcd")
    assert etcd["spec"]["replicas"] == 3
    pod = etcd["spec"]["template"]
    anti = pod["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert anti[0]["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    budget = _find(docs, "PodDisruptionBudget", "etcd")["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    image = pod["spec"]["containers"][0]["image"]
    major, minor = (int(part) for part in image.rsplit(":v", 1)[1].split(".")[:2])
    assert (major, minor) >= (3, 6), image
    members = next(a for a in pod["spec"]["containers"][0]["args"] if "initial-cluster=" in a)
    assert members.count("=https://") == 3  # members talk TLS with the site's etcd CA
    assert "--client-cert-auth" in pod["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("site", SITES)
def test_nodes_probe_readiness_and_liveness_and_get_time_to_drain(
    rendered: dict[str, str], site: str
) -> None:
    docs = documents(rendered[site])
    nodes = _find(docs, "StatefulSet", "callmesh")
    spec = nodes["spec"]["template"]["spec"]
    container = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    settings = tomllib.loads((K8S / "base" / "node.toml").read_text())
    assert ports == {"http": settings["http_port"], "grpc": settings["grpc_port"]}
    assert spec["terminationGracePeriodSeconds"] >= 600
    script = container["command"][-1]
    assert "CALLMESH_GATEWAY=true" in script
    assert "exec callmesh node" in script  # the node itself gets SIGTERM
    assert nodes["spec"]["replicas"] == (1 if site == "partner-c" else 2)


@pytest.mark.parametrize("site", SITES)
def test_every_container_has_requests_and_limits(rendered: dict[str, str], site: str) -> None:
    for doc in documents(rendered[site]):
        if doc["kind"] not in ("StatefulSet", "Deployment"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            resources = container["resources"]
            for part in ("requests", "limits"):
                assert set(resources[part]) >= {"cpu", "memory"}, (doc["metadata"], part)
            assert ":" in container["image"]
            assert not container["image"].endswith(":latest")


@pytest.mark.parametrize("site", SITES)
def test_the_site_settings_make_a_valid_node_config(
    rendered: dict[str, str], site: str, tmp_path: Path
) -> None:
    docs = documents(rendered[site])
    env = next(d for d in docs if d["metadata"]["name"].startswith("callmesh-env"))["data"]
    toml = next(d for d in docs if d["metadata"]["name"].startswith("callmesh-config"))["data"]
    environ = {**env, "CALLMESH_NODE_ID": "callmesh-0", "CALLMESH_GRPC_HOST": "10.1.2.3"}
    path = tmp_path / "node.toml"
    path.write_text(toml["node.toml"])
    config = NodeConfig.load(path, environ)
    assert config.site == site
    assert config.trust.name.lower() == ("partner" if site == "partner-c" else "inhouse")
    assert len(config.etcd_endpoints) == 3
    # in-house gateways dial in-house gateways only; a partner dials every in-house one
    others = {s for s in SITES if s != site and (site == "partner-c" or s != "partner-c")}
    assert {g.split(".")[1] for g in config.remote_gateways} == others
    assert config.tls_cert  # mutual TLS between nodes
    assert config.etcd_cert  # TLS with a client certificate to the site's etcd
    assert all(url.startswith("https://") for url in config.etcd_endpoints)


@pytest.mark.parametrize("site", SITES)
def test_services_and_the_service_monitor_find_their_pods(
    rendered: dict[str, str], site: str
) -> None:
    docs = documents(rendered[site])
    pods = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in ("StatefulSet", "Deployment")
    ]
    services = [d for d in docs if d["kind"] == "Service"]
    for service in services:
        selector = service["spec"]["selector"]
        ordinal = selector.pop("apps.kubernetes.io/pod-index", None)
        assert ordinal in (None, "0")  # set by the StatefulSet controller on each pod
        assert any(selector.items() <= labels.items() for labels in pods), service["metadata"]
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services if wanted.items() <= s["metadata"]["labels"].items()]
        assert len(chosen) == 1, (monitor["metadata"]["name"], chosen)  # no double scrape
        port_names = {p["name"] for p in chosen[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names


def _ingress_sources(policy: Manifest) -> list[tuple[ipaddress.IPv4Network, set[int]]]:
    rules = []
    for rule in policy["spec"].get("ingress", []):
        ports = {p["port"] for p in rule.get("ports", [])}
        for peer in rule.get("from", []):
            if "ipBlock" in peer:
                network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                assert isinstance(network, ipaddress.IPv4Network)
                rules.append((network, ports))
    return rules


@pytest.mark.parametrize("site", ["site-a", "site-b"])
def test_a_partner_reaches_only_the_gateway_of_an_inhouse_site(
    rendered: dict[str, str], site: str
) -> None:
    docs = documents(rendered[site])
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = _find(docs, "NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny["podSelector"] == {}
    assert "ingress" not in deny
    partner_rules = [
        (policy["spec"]["podSelector"]["matchLabels"], ports)
        for policy in policies
        for network, ports in _ingress_sources(policy)
        if network.overlaps(PARTNER_RANGE)
    ]
    assert partner_rules, "the partner reaches nothing: no cross-site gossip"
    for selector, ports in partner_rules:
        assert selector.get("apps.kubernetes.io/pod-index") == "0", selector
        assert ports == {7070}
    gateway = _find(docs, "Service", "callmesh-gateway")["spec"]
    assert gateway["selector"]["apps.kubernetes.io/pod-index"] == "0"
    assert gateway["externalTrafficPolicy"] == "Local"  # keeps the source address


def test_a_partner_site_connects_out_only_to_the_inhouse_gateways(
    rendered: dict[str, str],
) -> None:
    docs = documents(rendered["partner-c"])
    egress = _find(docs, "NetworkPolicy", "callmesh-egress")["spec"]
    assert egress["policyTypes"] == ["Egress"]
    outside = []
    for rule in egress["egress"]:
        assert rule.get("to"), "an egress rule without `to` allows everything"
        for peer in rule["to"]:
            if "ipBlock" in peer:
                network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                assert network.num_addresses == 1, network  # one gateway address each
                assert {p["port"] for p in rule["ports"]} == {7070}
                outside.append(network)
    assert len(outside) == 2  # site-a's and site-b's gateways


def test_the_dashboards_ship_as_configmaps_for_grafana(rendered: dict[str, str]) -> None:
    maps = [d for d in documents(rendered["monitoring"]) if d["kind"] == "ConfigMap"]
    shipped = {key: text for m in maps for key, text in m["data"].items()}
    assert shipped == {p.name: p.read_text() for p in DASHBOARDS.glob("*.json")}
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1" for m in maps)
