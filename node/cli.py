"""The `callmesh` command: one console script whose subcommands grow with the project."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

BENCHMARKS: dict[str, list[tuple[str, str]]] = {
    # name -> the (module, function) parts it runs, each returning its figures
    "registry": [("loadtest.bench_registry", "run")],
    "gossip": [("loadtest.bench_gossip", "run")],
    "routing": [("loadtest.bench_routing", "decision"), ("loadtest.bench_exchange", "exchange")],
}
QUICK: dict[str, dict[str, object]] = {
    # --quick: a short form for the tests; its figures are not comparable with the targets
    "loadtest.bench_registry": {"AGENTS": 2_000, "DELTAS": 40, "REPEATS": 1},
    "loadtest.bench_gossip": {"SAMPLES": 20, "HEAL_AGENTS": 1_000, "TRAFFIC_S": 3.0},
    "loadtest.bench_routing": {"AGENTS": 2_000, "DECISIONS": 100, "WARM_UP": 20},
    "loadtest.bench_exchange": {"SAMPLES": 20, "BURST_CALLS": 50, "AGENTS_PER_HOME": 60},
}


def _bench(args: argparse.Namespace) -> int:
    figures: dict[str, float] = {}
    for module_name, function in BENCHMARKS[args.name]:
        module = importlib.import_module(module_name)
        if args.quick:
            for constant, value in QUICK[module_name].items():
                setattr(module, constant, value)
        figures.update(getattr(module, function)())
    if args.quick:
        print("quick run: smaller sizes, figures not comparable with the targets")
    print(json.dumps(figures, sort_keys=True))
    return 0


def _up(args: argparse.Namespace) -> int:
    from node.up import run_up

    return run_up(sites=args.sites)


def _node(args: argparse.Namespace) -> int:
    from node.app import run_node
    from node.config import ConfigError, NodeConfig

    try:
        config = NodeConfig.load(args.config)
    except ConfigError as error:
        print(f"callmesh node: {error}", file=sys.stderr)
        return 2
    if args.asyncio:
        config = dataclasses.replace(config, event_loop="asyncio")
    return run_node(config)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="callmesh", description=__doc__)
    top.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    commands = top.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="run a benchmark; its last line is a JSON object")
    bench.add_argument("name", choices=sorted(BENCHMARKS))
    bench.add_argument("--quick", action="store_true", help="a short form (for the tests)")
    bench.set_defaults(run=_bench)
    up = commands.add_parser("up", help="run a local cluster on loopback until Ctrl-C")
    up.add_argument("--sites", type=int, default=3, help="how many sites (default 3)")
    up.set_defaults(run=_up)
    node = commands.add_parser("node", help="run one node until SIGTERM")
    node.add_argument("--config", type=Path, help="TOML file; CALLMESH_* variables override it")
    node.add_argument("--asyncio", action="store_true", help="plain asyncio instead of uvloop")
    node.set_defaults(run=_node)
    return top


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    run: Callable[[argparse.Namespace], int] = args.run
    sys.exit(run(args))
