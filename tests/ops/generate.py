"""Regenerate k8s/prometheus/prometheusrule.yaml from rules.yml (a test checks it is fresh)."""

from __future__ import annotations

from tests.ops.tools import PROMETHEUS_RULE, prometheus_rule_yaml


def main() -> None:
    PROMETHEUS_RULE.write_text(prometheus_rule_yaml())
    print(f"wrote {PROMETHEUS_RULE}")


if __name__ == "__main__":
    main()
