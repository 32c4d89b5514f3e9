"""k8s/prometheus: promtool checks the rules and runs their unit tests; the operator's copy is
fresh; every alert has a unit test and a runbook entry; rules read only exported metrics."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from tests.ops.tools import (
    K8S,
    PROMETHEUS_RULE,
    RULES,
    RULES_TEST,
    metric_names,
    prometheus_rule_yaml,
    recorded_names,
    run,
    tool,
)


def promtool(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    done = run(tool("promtool"), *args, cwd=cwd)
    return done.returncode, done.stdout + done.stderr


def test_promtool_checks_the_rules() -> None:
    code, output = promtool("check", "rules", str(RULES))
    assert code == 0, output
    assert "SUCCESS" in output


def test_promtool_runs_the_rule_unit_tests() -> None:
    code, output = promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert code == 0, output


def test_a_malformed_rule_fails_the_check(tmp_path: Path) -> None:
    broken = tmp_path / "rules.yml"
    broken.write_text(
        RULES.read_text().replace("sum by (site, queue) (", "sum by (site, queue (", 1)
    )
    code, output = promtool("check", "rules", str(broken))
    assert code != 0, output


def test_a_wrong_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    text = RULES.read_text()
    assert "oldest_wait_seconds:max > 120" in text
    (tmp_path / "rules.yml").write_text(text.replace("oldest_wait_seconds:max > 120", "> 1200"))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    code, output = promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert code != 0, output


def test_the_prometheus_rule_for_the_operator_is_fresh() -> None:
    assert PROMETHEUS_RULE.read_text() == prometheus_rule_yaml(), (
        "k8s/prometheus/prometheusrule.yaml is stale: run .venv/bin/python -m tests.ops.generate"
    )


def _alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_unit_test_a_severity_and_a_runbook_entry() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    headings = {
        re.sub(r"[^a-z0-9-]", "", line.lstrip("#").strip().lower().replace(" ", "-"))
        for line in (K8S / "README.md").read_text().splitlines()
        if line.startswith("### ")
    }
    alerts = _alerts()
    assert len(alerts) >= 7
    for rule in alerts:
        name = str(rule["alert"])
        assert name in tested, f"{name} has no firing unit test in rules_test.yml"
        labels = rule["labels"]
        annotations = rule["annotations"]
        assert isinstance(labels, dict)
        assert isinstance(annotations, dict)
        assert labels["severity"] in ("warning", "critical")
        assert annotations["runbook"] == f"k8s/README.md#{name.lower()}"
        assert name.lower() in headings, f"k8s/README.md has no '### {name}' section"


def test_rules_read_only_metrics_a_node_exports(exported: set[str]) -> None:
    known = exported | recorded_names() | {"up"}
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, (rule.get("record") or rule.get("alert"), unknown)
