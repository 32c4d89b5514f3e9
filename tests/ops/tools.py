"""What the operations tests share: where things are, kustomize rendering, PromQL metric names."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SITES = ("site-a", "site-b", "partner-c")
OVERLAYS = {site: K8S / "overlays" / site for site in SITES}
MONITORING = K8S / "monitoring"
RULES = K8S / "prometheus" / "rules.yml"
RULES_TEST = K8S / "prometheus" / "rules_test.yml"
PROMETHEUS_RULE = K8S / "prometheus" / "prometheusrule.yaml"
DASHBOARDS = K8S / "dashboards"
KUBERNETES_VERSION = "1.37"
"""The Kubernetes release the manifests are validated against (kubernetes-validate's newest)."""

Manifest = dict[str, Any]


def tool(name: str) -> str:
    """A command from the virtualenv (kubectl, kubernetes-validate) or else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed: run scripts/setup.sh")
    return found


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def render(directory: Path) -> str:
    """`kubectl kustomize directory`: the manifests as one YAML stream."""
    done = run(tool("kubectl"), "kustomize", str(directory))
    if done.returncode != 0:
        raise AssertionError(f"kustomize {directory} failed:\n{done.stderr}")
    return done.stdout


def documents(stream: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(stream) if doc]


def prometheus_rule_yaml() -> str:
    """k8s/prometheus/prometheusrule.yaml as generated from rules.yml."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "callmesh",
            "labels": {"app.kubernetes.io/part-of": "callmesh", "role": "alert-rules"},
        },
        "spec": {"groups": groups},
    }
    header = (
        "# Generated from rules.yml by `.venv/bin/python -m tests.ops.generate`: do not edit.\n"
    )
    return header + yaml.safe_dump(rule, sort_keys=False, width=1000)


_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
}  # fmt: skip
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NAME = re.compile(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (a lexical pass that promtool's parser backs:
    the tests also have promtool parse every expression)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", text)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _NAME.finditer(text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue  # a function, an aggregation or an operator
        names.add(match.group())
    return names


def exported_names(exposition: str) -> set[str]:
    """Series names a /metrics page can produce, from its TYPE lines (histograms and summaries
    give _bucket, _sum and _count)."""
    names = set()
    for line in exposition.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(maxsplit=3)
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "summary":
            names |= {f"{name}_sum", f"{name}_count"}
    return names


def recorded_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}
