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
    "media": [("loadtest.bench_media", "run")],
    "sip": [("loadtest.bench_sip", "run")],
    "cluster": [("loadtest.bench_cluster", "run")],  # three sites, pooled and siloed, ~12 min
}
QUICK: dict[str, dict[str, object]] = {
    # --quick: a short form for the tests; its figures are not comparable with the targets
    "loadtest.bench_cluster": {"SCENARIO": "smoke.toml", "SILOED": False},
    "loadtest.bench_sip": {
        "RATES": (5, 10),
        "STEP_S": 2.0,
        "AGENTS": 20,
        "WARM_UP_CALLS": 2,
        "SUSTAINED_P99_MS": 10_000.0,
        "CONCURRENT_STEPS": (3,),
        "RTP_HOLD_S": 1.0,
    },
    "loadtest.bench_registry": {"AGENTS": 2_000, "DELTAS": 40, "REPEATS": 1},
    "loadtest.bench_gossip": {"SAMPLES": 20, "HEAL_AGENTS": 1_000, "TRAFFIC_S": 3.0},
    "loadtest.bench_routing": {"AGENTS": 2_000, "DECISIONS": 100, "WARM_UP": 20},
    "loadtest.bench_exchange": {"SAMPLES": 20, "BURST_CALLS": 50, "AGENTS_PER_HOME": 60},
    "loadtest.bench_media": {
        "PASSTHROUGH_STEPS": (3,),
        "TRANSCODE_STEPS": (2,),
        "STOCK_STEPS": (1,),
        "HOLD_S": 1.0,
        "PROBE_LOAD": 2,
        "PROBES": 3,
        "JANUS": False,
    },
}


def _bench(args: argparse.Namespace) -> int:
    figures: dict[str, float] = {}
    if args.name == "all":  # every benchmark, then docs/BENCHMARKS.md rewritten (not --quick)
        from loadtest.benchall import run_all

        results = run_all(BENCHMARKS, QUICK if args.quick else None, page=args.doc)
        for result in results:
            figures.update(result.figures)
        print(json.dumps(figures, sort_keys=True))
        return 1 if any(result.error for result in results) else 0
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


def _chaos(args: argparse.Namespace) -> int:
    import asyncio

    from chaos.runner import Options, run_many, summary

    if args.schedules < 1 or args.duration < 15:
        print("callmesh chaos: --schedules must be >= 1 and --duration >= 15", file=sys.stderr)
        return 2
    options = Options(duration_s=args.duration, faults=args.faults, keep=args.keep)
    results = asyncio.run(run_many(args.schedules, args.seed, options))
    report = summary(results, args.seed)
    print(json.dumps(report, sort_keys=True))
    return 1 if report["violations_total"] else 0


def _loadtest(args: argparse.Namespace) -> int:
    from loadtest.client import Credentials
    from loadtest.run import command

    credentials = Credentials(args.user or "", args.password or "")
    return command(
        args.scenario, url=args.url, siloed=args.siloed, out=args.out, credentials=credentials
    )


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
    try:
        return run_node(config)
    except ConfigError as error:  # found on start: TLS material, the users file
        print(f"callmesh node: {error}", file=sys.stderr)
        return 2


def _ca(args: argparse.Namespace) -> int:
    from node.ca import CaError, init_ca, issue
    from node.sitekeys import SiteKeyError, write_site_key
    from registry.records import Trust

    try:
        if args.ca_command == "init":
            print(init_ca(args.dir))
        elif args.ca_command == "site-key":
            for path in write_site_key(args.dir, args.site, Trust[args.trust.upper()]):
                print(path)
        else:
            for path in issue(args.dir, args.node, args.site, Trust[args.trust.upper()]):
                print(path)
    except (CaError, SiteKeyError) as error:
        print(f"callmesh ca: {error}", file=sys.stderr)
        return 2
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    import getpass

    from node.users import hash_password

    password = sys.stdin.readline().rstrip("\n") if args.stdin else getpass.getpass()
    if not password:
        print("callmesh hash-password: empty password", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="callmesh", description=__doc__)
    top.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    commands = top.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="run a benchmark; its last line is a JSON object")
    bench.add_argument(
        "name",
        nargs="?",
        default="all",
        choices=["all", *sorted(BENCHMARKS)],
        help="one benchmark; none or all: every one, then docs/BENCHMARKS.md is rewritten",
    )
    bench.add_argument(
        "--doc",
        type=Path,
        default=Path("docs/BENCHMARKS.md"),
        help="the page `bench all` rewrites (default docs/BENCHMARKS.md)",
    )
    bench.add_argument("--quick", action="store_true", help="a short form (for the tests)")
    bench.set_defaults(run=_bench)
    up = commands.add_parser("up", help="run a local cluster on loopback until Ctrl-C")
    up.add_argument("--sites", type=int, default=3, help="how many sites (default 3)")
    up.set_defaults(run=_up)
    chaos = commands.add_parser(
        "chaos",
        help="randomized fault schedules against a local cluster under load, checked against "
        "the invariants; the last line is a JSON object, the exit status 1 on a violation",
    )
    chaos.add_argument("--schedules", type=int, default=1, help="how many (default 1)")
    chaos.add_argument("--seed", type=int, default=1, help="schedule i uses seed + i")
    chaos.add_argument("--duration", type=float, default=60.0, help="seconds of faults and load")
    chaos.add_argument("--faults", type=int, help="faults per schedule (default: one per 8 s)")
    chaos.add_argument("--keep", action="store_true", help="keep the cluster's files")
    chaos.set_defaults(run=_chaos)
    loadtest = commands.add_parser(
        "loadtest",
        help="run a traffic scenario (loadtest/scenarios/*.toml) through the public API and "
        "report the KPIs beside the Erlang prediction; exit status 1 on a lost call or a double "
        "booking",
    )
    loadtest.add_argument("scenario", type=Path, help="the scenario file (TOML)")
    loadtest.add_argument(
        "--url", help="drive a running cluster on loopback (http://127.0.0.1:PORT of one node)"
    )
    loadtest.add_argument(
        "--siloed", action="store_true", help="each site serves only its own callers"
    )
    loadtest.add_argument("--out", type=Path, help="report directory (default loadtest-NAME-MODE)")
    loadtest.add_argument("--user", help="admin user for a running cluster with authentication")
    loadtest.add_argument("--password", help="that user's password")
    loadtest.set_defaults(run=_loadtest)
    ca = commands.add_parser("ca", help="a small CA for node-to-node mutual TLS")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True)
    ca_init = ca_commands.add_parser("init", help="make DIR/ca.pem and DIR/ca.key")
    ca_init.add_argument("dir", type=Path)
    ca_issue = ca_commands.add_parser("issue", help="make DIR/NODE.pem and DIR/NODE.key")
    ca_issue.add_argument("dir", type=Path)
    ca_issue.add_argument("--node", required=True, help="the node id (certificate CN)")
    ca_issue.add_argument("--site", required=True, help="the node's site (O)")
    ca_issue.add_argument("--trust", required=True, choices=["inhouse", "partner"], help="(OU)")
    site_key = ca_commands.add_parser(
        "site-key", help="make DIR/SITE.site.key (token signing) and add SITE to DIR/site-keys.toml"
    )
    site_key.add_argument("dir", type=Path)
    site_key.add_argument("--site", required=True)
    site_key.add_argument("--trust", required=True, choices=["inhouse", "partner"])
    ca.set_defaults(run=_ca)
    hashing = commands.add_parser(
        "hash-password", help="print the scrypt hash of a password for a users file"
    )
    hashing.add_argument("--stdin", action="store_true", help="read it from stdin, not a prompt")
    hashing.set_defaults(run=_hash_password)
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
