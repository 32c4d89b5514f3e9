"""k8s/dashboards: stable uids, a datasource variable, and queries that parse (promtool) and
read only metrics a node exports (or the recording rules)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.tools import DASHBOARDS, metric_names, recorded_names, run, tool

UIDS = {"wallboard.json": "callmesh-wallboard", "sre.json": "callmesh-sre"}
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h"}


def boards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, with Grafana's macros filled in."""
    found = []
    for name, board in boards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for macro, value in GRAFANA_MACROS.items():
                    expr = expr.replace(macro, value)
                found.append((f"{name}: {panel['title']} {target['refId']}", expr))
    return found


def test_dashboards_have_stable_uids_and_a_datasource_variable() -> None:
    found = boards()
    assert {name: board["uid"] for name, board in found.items()} == UIDS
    for name, board in found.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", name
        assert variables["datasource"]["query"] == "prometheus", name
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]


def promtool_parses(exprs: list[str], directory: Path) -> tuple[int, str]:
    """promtool check rules on a rules file holding each expression as a recording rule."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = directory / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = run(tool("promtool"), "check", "rules", str(path))
    return done.returncode, done.stdout + done.stderr


def test_every_dashboard_query_parses_with_promtool(tmp_path: Path) -> None:
    found = queries()
    assert len(found) >= 30
    code, output = promtool_parses([expr for _, expr in found], tmp_path)
    assert code == 0, output
    assert f"SUCCESS: {len(found)} rules found" in output


def test_a_query_that_does_not_parse_is_caught(tmp_path: Path) -> None:
    code, output = promtool_parses(["sum(rate(callmesh_calls_total[5m])"], tmp_path)
    assert code != 0, output


def test_dashboard_queries_read_only_metrics_a_node_exports(exported: set[str]) -> None:
    known = exported | recorded_names() | {"up"}
    for where, expr in queries():
        unknown = metric_names(expr) - known
        assert not unknown, (where, unknown)
    for board in boards().values():
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["definition"])
                assert match, variable["definition"]
                assert match.group(1) in known


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (site) (rate(callmesh_calls_total{site=~"$site"}[5m])) * 60',
            {"callmesh_calls_total"},
        ),
        (
            "histogram_quantile(0.9, sum by (le) (rate(a_bucket[1m]))) / on (instance) "
            "group_left (site) b_info offset 5m",
            {"a_bucket", "b_info"},
        ),
        ("x:y:rate5m > 1e3 and up == 0 or vector(0)", {"x:y:rate5m", "up"}),
        ('count(c{state="not-ready"} == 0) by (kind)', {"c"}),
    ],
)
def test_metric_names_are_found_in_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
