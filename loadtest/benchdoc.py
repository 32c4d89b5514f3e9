"""docs/BENCHMARKS.md after a `callmesh bench` run of every benchmark. Pure (text in, text out).

The page's own text stays: in its tables (`| figure | measured | target | ... |`) the measured
cell of every figure that was run is replaced, and each section's `Command: ... (DATE)` line gets
the run's date. Two generated blocks, between HTML comment markers, are rewritten whole: a summary
of every figure with its target and command near the top, and the cluster scenario's section.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass

SUMMARY = ("<!-- bench:summary:begin -->", "<!-- bench:summary:end -->")
CLUSTER = ("<!-- bench:cluster:begin -->", "<!-- bench:cluster:end -->")

Target = tuple[str, float]


@dataclass(frozen=True, slots=True)
class BenchResult:
    """One benchmark's run: its figures and targets, or the error that stopped it."""

    name: str
    figures: Mapping[str, float]
    targets: Mapping[str, Target]
    error: str = ""

    @property
    def command(self) -> str:
        return f".venv/bin/callmesh bench {self.name}"


def fmt(value: float) -> str:
    """A figure as the page writes it: thousands separated, at most two decimals."""
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.1f}"


def met(value: float, target: Target) -> bool:
    op, bound = target
    return value >= bound if op == ">=" else value <= bound


def summary(results: list[BenchResult], date: str, note: str) -> str:
    lines = [
        SUMMARY[0],
        f"## Last full run ({date})",
        "",
        textwrap.fill(
            f"`.venv/bin/callmesh bench` runs every benchmark below and rewrites this page. {note}",
            100,
        ),
        "",
        "| benchmark | figure | measured | target | met | command |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        if result.error:
            lines.append(f"| {result.name} | (failed) | {result.error} | | | `{result.command}` |")
            continue
        for name, value in result.figures.items():
            target = result.targets.get(name)
            shown = f"{target[0]} {fmt(target[1])}" if target else ""
            verdict = ("yes" if met(value, target) else "**no**") if target else ""
            lines.append(
                f"| {result.name} | {name} | {fmt(value)} | {shown} | {verdict} | "
                f"`{result.command}` |"
            )
    lines += ["", SUMMARY[1]]
    return "\n".join(lines)


def _replace_block(text: str, markers: tuple[str, str], block: str, after: str) -> str:
    begin, end = markers
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        return head + block + tail
    if after and after in text:
        at = text.index(after) + len(after)
        return text[:at] + "\n\n" + block + "\n" + text[at:]
    return text.rstrip("\n") + "\n\n" + block + "\n"


_ROW = re.compile(r"^\| (?P<name>[a-z0-9_]+) \| (?P<value>[^|]*) \|(?P<rest>.*)$")


def update_tables(text: str, figures: Mapping[str, float]) -> str:
    """The measured cell of each table row named after a figure that was run."""
    out = []
    for line in text.split("\n"):
        match = _ROW.match(line)
        if match is not None and match["name"] in figures:
            line = f"| {match['name']} | {fmt(figures[match['name']])} |{match['rest']}"
        out.append(line)
    return "\n".join(out)


def update_dates(text: str, names: list[str], date: str) -> str:
    for name in names:
        command = rf"Command: `\.venv/bin/callmesh bench {re.escape(name)}`"
        text = re.sub(rf"({command}) \(\d{{4}}-\d{{2}}-\d{{2}}\)", rf"\1 ({date})", text)
    return text


def rewrite(
    text: str, results: list[BenchResult], date: str, note: str, cluster_section: str = ""
) -> str:
    """The page after this run (see the module docstring)."""
    figures = {k: v for r in results if not r.error for k, v in r.figures.items()}
    text = update_tables(text, figures)
    text = update_dates(text, [r.name for r in results if not r.error], date)
    first_paragraph_end = _intro_end(text)
    text = _replace_block(text, SUMMARY, summary(results, date, note), first_paragraph_end)
    if cluster_section:
        block = f"{CLUSTER[0]}\n{cluster_section.strip()}\n{CLUSTER[1]}"
        text = _replace_block(text, CLUSTER, block, "")
    return text if text.endswith("\n") else text + "\n"


def _intro_end(text: str) -> str:
    """The last line of the page's introduction (before its first section), to insert after."""
    head = text.split("\n## ", 1)[0].rstrip("\n")
    return head.split("\n")[-1] if head else ""
