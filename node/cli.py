"""The `callmesh` command: one console script whose subcommands grow with the project."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def _bench_registry() -> dict[str, float]:
    from loadtest.bench_registry import run

    return run()


def _bench_gossip() -> dict[str, float]:
    from loadtest.bench_gossip import run

    return run()


def _bench_routing() -> dict[str, float]:
    from loadtest.bench_exchange import exchange
    from loadtest.bench_routing import decision

    return {**decision(), **exchange()}


BENCHMARKS: dict[str, Callable[[], dict[str, float]]] = {
    "gossip": _bench_gossip,
    "routing": _bench_routing,
    "registry": _bench_registry,
}


def _bench(args: argparse.Namespace) -> int:
    figures = BENCHMARKS[args.name]()
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
