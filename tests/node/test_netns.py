"""The sites' network namespaces: the commands as values (no root needed), and for real (root
only): a cut between two sites blocks TCP between them and heal restores it."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import sys
from pathlib import Path

import pytest

from node.netns import (
    BLOCKS,
    NetnsError,
    SiteNamespaces,
    choose_block,
    cut_commands,
    exec_prefix,
    isolate_commands,
    networks_in,
    owner_of,
    parse_netns_list,
    plan_network,
    remove_stale,
    run,
    setup_commands,
    stale,
    teardown_commands,
    unavailable,
)

SITES = ["site-a", "site-b", "partner-c"]


def test_a_plan_gives_each_site_a_namespace_and_a_block_of_its_own() -> None:
    plan = plan_network(SITES, owner=4242, serial=3)
    assert plan.block == BLOCKS[0]
    assert plan.hub == "callmesh-4242-3-hub"
    assert [s.namespace for s in plan.sites] == [f"callmesh-4242-3-{i}" for i in (1, 2, 3)]
    assert [s.address for s in plan.sites] == ["10.213.1.1", "10.213.2.1", "10.213.3.1"]
    assert [str(s.block) for s in plan.sites] == ["10.213.1.0/24", "10.213.2.0/24", "10.213.3.0/24"]
    assert plan.root_address == "10.213.0.1/16"
    assert plan.root_device == "cm1092-3"
    assert len(plan_network(SITES, owner=4_194_304, serial=99_999).root_device) <= 15


def test_a_block_in_use_is_skipped_and_bad_plans_are_refused() -> None:
    in_use = networks_in(
        "default via 192.0.2.1 dev eth0\n10.213.0.0/16 dev cm1-1 proto kernel scope link\n"
        "3: cm1-2    inet 10.214.0.1/16 scope global cm1-2\n"
    )
    assert ipaddress.IPv4Network("10.213.0.0/16") in in_use
    assert choose_block(in_use) == ipaddress.IPv4Network("10.215.0.0/16")
    assert plan_network(SITES, 1, 1, in_use).sites[0].address == "10.215.1.1"
    with pytest.raises(NetnsError, match="overlaps"):
        choose_block([ipaddress.IPv4Network("10.0.0.0/8")])
    with pytest.raises(ValueError, match="repeat"):
        plan_network(["a", "a"], 1, 1)
    with pytest.raises(ValueError, match="at least one"):
        plan_network([], 1, 1)
    with pytest.raises(KeyError, match="site-z"):
        plan_network(SITES, 1, 1).of("site-z")


def test_the_commands_build_cut_heal_isolate_and_remove_the_topology() -> None:
    plan = plan_network(SITES[:2], owner=77, serial=1)
    a, b = plan.sites
    setup = setup_commands(plan)
    assert setup[:3] == [("ip", "netns", "add", ns) for ns in (plan.hub, a.namespace, b.namespace)]
    assert ("ip", "-n", a.namespace, "addr", "add", "10.213.1.1/16", "dev", "eth0") in setup
    assert ("ip", "addr", "add", "10.213.0.1/16", "dev", plan.root_device) in setup
    assert (
        "ip", "-n", plan.hub, "link", "add", "name", "s2",
        "type", "veth", "peer", "name", "eth0", "netns", b.namespace,
    ) in setup  # fmt: skip
    assert cut_commands(plan, "site-a", "site-b") == [
        ("ip", "-n", a.namespace, "route", "add", "blackhole", "10.213.2.0/24"),
        ("ip", "-n", b.namespace, "route", "add", "blackhole", "10.213.1.0/24"),
    ]
    healed = cut_commands(plan, "site-b", "site-a", heal=True)
    assert sorted(healed) == sorted(
        [(*c[:4], "delete", *c[5:]) for c in cut_commands(plan, "site-a", "site-b")]
    )
    with pytest.raises(ValueError, match="two different sites"):
        cut_commands(plan, "site-a", "site-a")
    assert isolate_commands(plan, "site-b") == [
        ("ip", "-n", b.namespace, "link", "set", "dev", "eth0", "down")
    ]
    assert isolate_commands(plan, "site-b", heal=True)[0][-1] == "up"
    assert teardown_commands(plan) == [
        ("ip", "link", "delete", "dev", plan.root_device),
        *(("ip", "netns", "delete", ns) for ns in (b.namespace, a.namespace, plan.hub)),
    ]
    assert exec_prefix(plan, "site-a") == ["ip", "netns", "exec", a.namespace]


def test_only_the_projects_namespaces_of_dead_owners_are_stale() -> None:
    listed = parse_netns_list(
        "callmesh-10-1-hub (id: 0)\ncallmesh-10-1-1\ncallmesh-20-1-1 (id: 2)\nother-10\n"
        "callmesh-x-1\n"
    )
    assert listed == [
        "callmesh-10-1-hub",
        "callmesh-10-1-1",
        "callmesh-20-1-1",
        "other-10",
        "callmesh-x-1",
    ]
    assert owner_of("callmesh-10-1-hub") == 10
    assert owner_of("other-10") is None
    assert owner_of("callmesh-x-1") is None
    assert stale(listed, alive=lambda pid: pid == 20) == ["callmesh-10-1-hub", "callmesh-10-1-1"]


# -- for real -------------------------------------------------------------------------------------

WHY_NOT = unavailable()
needs_netns = pytest.mark.skipif(
    WHY_NOT is not None, reason=f"network namespaces unavailable: {WHY_NOT}"
)

SERVE = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
s.settimeout(30)
while True:
    c, _ = s.accept()
    c.sendall(b"hi")
    c.close()
"""

CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as c:
        print(c.recv(2).decode())
except OSError as e:
    print(type(e).__name__)
"""


async def connect(prefix: list[str], host: str, port: int) -> str:
    """ "hi" when a TCP connection from inside `prefix` reaches the server, else the error."""
    return (await run([*prefix, sys.executable, "-c", CONNECT, host, str(port)])).strip()


@needs_netns
async def test_a_cut_blocks_tcp_between_two_sites_and_heal_restores_it(tmp_path: Path) -> None:
    async with SiteNamespaces.for_sites(["site-a", "site-b"]) as net:
        names = set(parse_netns_list(await run(["ip", "netns", "list"])))
        assert set(net.plan.namespaces) <= names
        b_host = net.address("site-b")
        server = await asyncio.create_subprocess_exec(
            *net.prefix("site-b"),
            sys.executable,
            "-c",
            SERVE,
            b_host,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert server.stdout is not None
            port = int(await asyncio.wait_for(server.stdout.readline(), 10))
            a = net.prefix("site-a")
            assert await connect(a, b_host, port) == "hi"
            assert await connect([], b_host, port) == "hi"  # the root reaches every site
            await net.cut("site-a", "site-b")
            assert await connect(a, b_host, port) != "hi"
            assert await connect([], b_host, port) == "hi"  # a cut between sites only
            await net.cut("site-a", "site-b")  # twice: still one cut
            await net.heal("site-b", "site-a")
            assert await connect(a, b_host, port) == "hi"
            await net.isolate("site-b")
            assert await connect([], b_host, port) != "hi"
            await net.heal_all()
            assert await connect([], b_host, port) == "hi"
        finally:
            server.kill()
            await server.wait()
    left = set(parse_netns_list(await run(["ip", "netns", "list"])))
    assert not left & set(net.plan.namespaces)
    links = await run(["ip", "-o", "link", "show"])
    assert f" {net.plan.root_device}@" not in links


@needs_netns
async def test_stale_namespaces_of_dead_owners_are_removed_and_live_ones_kept() -> None:
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()  # its pid now names no process
    dead, live = f"callmesh-{gone.pid}-1-1", f"callmesh-{os.getpid()}-9999-1"
    for name in (dead, live):
        await run(["ip", "netns", "add", name])
    try:
        removed = remove_stale()
        names = set(parse_netns_list(await run(["ip", "netns", "list"])))
        assert dead in removed
        assert dead not in names
        assert live in names
    finally:
        for name in (dead, live):
            with contextlib.suppress(NetnsError):
                await run(["ip", "netns", "delete", name])
