"""The `callmesh` command: one console script whose subcommands grow with the project."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence


def _bench_registry() -> dict[str, float]:
    from loadtest.bench_registry import run

    return run()


BENCHMARKS: dict[str, Callable[[], dict[str, float]]] = {"registry": _bench_registry}


def _bench(args: argparse.Namespace) -> int:
    figures = BENCHMARKS[args.name]()
    print(json.dumps(figures, sort_keys=True))
    return 0


def _up(args: argparse.Namespace) -> int:
    from node.up import run_up

    return run_up(sites=args.sites)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="callmesh", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="run a benchmark; its last line is a JSON object")
    bench.add_argument("name", choices=sorted(BENCHMARKS))
    bench.set_defaults(run=_bench)
    up = commands.add_parser("up", help="run a local cluster on loopback until Ctrl-C")
    up.add_argument("--sites", type=int, default=3, help="how many sites (default 3)")
    up.set_defaults(run=_up)
    return top


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    sys.exit(run(args))
