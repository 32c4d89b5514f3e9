"""`callmesh bench` (or `bench all`): every registered benchmark in turn, the cluster scenario
last, then docs/BENCHMARKS.md rewritten with each figure, its target and its command
(loadtest/benchdoc.py). A benchmark that fails is reported on the page and the run goes on."""

from __future__ import annotations

import datetime
import importlib
import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

from loadtest.benchdoc import BenchResult, rewrite

PAGE = Path("docs/BENCHMARKS.md")


def _targets(module: ModuleType) -> dict[str, tuple[str, float]]:
    targets = getattr(module, "TARGETS", {})
    return {str(k): (str(op), float(v)) for k, (op, v) in targets.items()}


def run_all(
    benchmarks: Mapping[str, Sequence[tuple[str, str]]],
    quick: Mapping[str, Mapping[str, object]] | None = None,
    *,
    page: Path | None = PAGE,
    out: Callable[[str], None] = print,
) -> list[BenchResult]:
    """Run every benchmark (with `quick` sizes when given); rewrite `page` unless quick or None."""
    results = []
    order = sorted(benchmarks, key=lambda name: (name == "cluster", name))
    for name in order:
        out(f"== bench {name}")
        figures: dict[str, float] = {}
        targets: dict[str, tuple[str, float]] = {}
        error = ""
        for module_name, function in benchmarks[name]:
            try:
                module = importlib.import_module(module_name)
                for constant, value in (quick or {}).get(module_name, {}).items():
                    setattr(module, constant, value)
                figures.update(getattr(module, function)())
                targets.update(_targets(module))
            except Exception as failure:  # one broken benchmark must not hide the others
                out(traceback.format_exc())
                error = f"{type(failure).__name__}: {failure}"[:200].replace("|", "/")
                break
        results.append(BenchResult(name, figures, targets, error))
    if page is not None and quick is None:
        write_page(page, results)
        out(f"rewrote {page}")
    return results


def write_page(page: Path, results: list[BenchResult]) -> None:
    date = datetime.date.today().isoformat()
    note = (
        f"Measured on this machine ({os.cpu_count()} cores); other work running at the same "
        "time slows the figures down, so treat a miss on a shared machine with care."
    )
    section = ""
    cluster = importlib.import_module("loadtest.bench_cluster")
    reports = getattr(cluster, "last", None)
    if reports is not None and any(r.name == "cluster" and not r.error for r in results):
        section = cluster.section(reports[0], reports[1], date)
    page.write_text(rewrite(page.read_text(), results, date, note, section))
