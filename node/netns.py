"""The sites' network namespaces: one namespace per site, joined through a bridge, so that a link
between two sites can be cut by the kernel instead of inside the nodes (DESIGN.md §9).

The topology of one run (every name carries the owner's PID and a serial number, so runs and
stale leftovers never collide):

- a hub namespace `callmesh-PID-SERIAL-hub` holding the bridge `br0`;
- one namespace per site, `callmesh-PID-SERIAL-N`, with `lo` and `eth0` (a veth pair whose other
  end is a port of the bridge) and the address 10.X.N.1/16: the site's block is 10.X.N.0/24;
- a veth pair from the root namespace (`cmPID-SERIAL` in hex, 10.X.0.1/16) to the bridge, so the
  test harness reaches every site's HTTP API and etcd.

A cut between sites A and B is a blackhole route to B's block inside A's namespace and one to A's
block inside B's (a connect fails at once, packets of open connections are dropped); heal deletes
them. Isolating a whole site sets its `eth0` down. Deleting the hub and the site namespaces
removes every veth pair with them, the root one included.

The commands are built by pure functions (tested without root); `SiteNamespaces` runs them with
`ip` (iproute2): root only, no nft or iptables needed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

log = logging.getLogger(__name__)

PREFIX = "callmesh-"
"""Every namespace of the project starts with it; then the owner's PID."""
BLOCKS = tuple(ipaddress.IPv4Network(f"10.{second}.0.0/16") for second in range(213, 251))
"""Where a run's /16 comes from: the first of these that no route or address of the root
namespace overlaps."""
SITE_DEVICE = "eth0"
BRIDGE = "br0"
MAX_SITES = 254

Command = tuple[str, ...]


class NetnsError(RuntimeError):
    code = "netns_unavailable"


@dataclass(frozen=True, slots=True)
class SiteNet:
    """One site's namespace and address."""

    site: str
    namespace: str
    hub_port: str  # the bridge's end of the site's veth pair (inside the hub)
    address: str  # the site's processes bind it
    block: ipaddress.IPv4Network  # the site's /24: what a cut blackholes


@dataclass(frozen=True, slots=True)
class NetPlan:
    """The namespaces, links and addresses of one run (a value: nothing exists yet)."""

    owner: int
    serial: int
    block: ipaddress.IPv4Network
    hub: str
    root_device: str
    root_address: str
    sites: tuple[SiteNet, ...]

    def __post_init__(self) -> None:
        if len(self.root_device) > 15:
            raise ValueError(f"device name {self.root_device!r} is longer than 15 characters")
        names = [s.site for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"site names repeat: {names}")

    def of(self, site: str) -> SiteNet:
        for net in self.sites:
            if net.site == site:
                return net
        raise KeyError(f"no namespace for site {site!r} (sites: {[s.site for s in self.sites]})")

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.hub, *(s.namespace for s in self.sites))


def plan_network(
    sites: Sequence[str], owner: int, serial: int, in_use: Iterable[ipaddress.IPv4Network] = ()
) -> NetPlan:
    """The topology for these sites, in the first block of BLOCKS that nothing in `in_use`
    overlaps."""
    if not sites:
        raise ValueError("a network needs at least one site")
    if len(sites) > MAX_SITES:
        raise ValueError(f"at most {MAX_SITES} sites, got {len(sites)}")
    if owner <= 0 or serial < 0:
        raise ValueError(f"bad owner {owner} or serial {serial}")
    block = choose_block(in_use)
    subnets = list(block.subnets(new_prefix=24))
    base = f"{PREFIX}{owner}-{serial}"
    return NetPlan(
        owner=owner,
        serial=serial,
        block=block,
        hub=f"{base}-hub",
        root_device=f"cm{owner:x}-{serial:x}",
        root_address=f"{subnets[0][1]}/{block.prefixlen}",
        sites=tuple(
            SiteNet(
                site=site,
                namespace=f"{base}-{i + 1}",
                hub_port=f"s{i + 1}",
                address=str(subnets[i + 1][1]),
                block=subnets[i + 1],
            )
            for i, site in enumerate(sites)
        ),
    )


def choose_block(in_use: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    taken = list(in_use)
    for block in BLOCKS:
        if not any(block.overlaps(net) for net in taken):
            return block
    raise NetnsError(
        f"every block of {BLOCKS[0]} to {BLOCKS[-1]} overlaps a route or address in use"
    )


def networks_in(text: str) -> list[ipaddress.IPv4Network]:
    """Every IPv4 address or prefix named in `ip -4 -o route` / `ip -4 -o addr` output."""
    found = []
    for token in text.split():
        if token[:1].isdigit() and "." in token:
            try:
                found.append(ipaddress.IPv4Network(token, strict=False))
            except ValueError:
                continue
    return found


# -- commands (pure) ------------------------------------------------------------------------------


def setup_commands(plan: NetPlan) -> list[Command]:
    hub = plan.hub
    commands: list[Command] = [("ip", "netns", "add", ns) for ns in plan.namespaces]
    commands += [
        ("ip", "-n", hub, "link", "add", "name", BRIDGE, "type", "bridge"),
        ("ip", "-n", hub, "link", "set", "dev", BRIDGE, "up"),
        ("ip", "link", "add", "name", plan.root_device, *_veth_peer("r0", hub)),
        ("ip", "-n", hub, "link", "set", "dev", "r0", "master", BRIDGE, "up"),
        ("ip", "addr", "add", plan.root_address, "dev", plan.root_device),
        ("ip", "link", "set", "dev", plan.root_device, "up"),
    ]
    prefixlen = plan.block.prefixlen
    for net in plan.sites:
        ns = net.namespace
        commands += [
            ("ip", "-n", hub, "link", "add", "name", net.hub_port, *_veth_peer(SITE_DEVICE, ns)),
            ("ip", "-n", hub, "link", "set", "dev", net.hub_port, "master", BRIDGE, "up"),
            ("ip", "-n", ns, "link", "set", "dev", "lo", "up"),
            ("ip", "-n", ns, "addr", "add", f"{net.address}/{prefixlen}", "dev", SITE_DEVICE),
            ("ip", "-n", ns, "link", "set", "dev", SITE_DEVICE, "up"),
        ]
    return commands


def _veth_peer(name: str, namespace: str) -> Command:
    return ("type", "veth", "peer", "name", name, "netns", namespace)


def teardown_commands(plan: NetPlan) -> list[Command]:
    """The root's veth pair deleted (at once: a namespace's devices go a moment after it), then
    the namespaces (the other veth pairs go with them)."""
    return [
        ("ip", "link", "delete", "dev", plan.root_device),
        *(("ip", "netns", "delete", ns) for ns in reversed(plan.namespaces)),
    ]


def cut_commands(plan: NetPlan, a: str, b: str, *, heal: bool = False) -> list[Command]:
    """Blackhole routes between two sites' blocks, in both namespaces (heal: deleted)."""
    if a == b:
        raise ValueError(f"a cut needs two different sites, got {a!r} twice")
    verb = "delete" if heal else "add"
    one, other = plan.of(a), plan.of(b)
    return [
        ("ip", "-n", one.namespace, "route", verb, "blackhole", str(other.block)),
        ("ip", "-n", other.namespace, "route", verb, "blackhole", str(one.block)),
    ]


def isolate_commands(plan: NetPlan, site: str, *, heal: bool = False) -> list[Command]:
    """The site's link to the bridge down (heal: up): nothing reaches it, not even the root."""
    net = plan.of(site)
    return [
        ("ip", "-n", net.namespace, "link", "set", "dev", SITE_DEVICE, "up" if heal else "down")
    ]


def exec_prefix(plan: NetPlan, site: str) -> list[str]:
    """What runs a command inside the site's namespace."""
    return ["ip", "netns", "exec", plan.of(site).namespace]


def owner_of(namespace: str) -> int | None:
    """The PID that created a namespace of the project; None for any other namespace."""
    if not namespace.startswith(PREFIX):
        return None
    head = namespace[len(PREFIX) :].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def stale(namespaces: Iterable[str], alive: Callable[[int], bool]) -> list[str]:
    """The project's namespaces whose owner is dead (others' namespaces are never named)."""
    found = []
    for name in namespaces:
        owner = owner_of(name)
        if owner is not None and not alive(owner):
            found.append(name)
    return found


def parse_netns_list(text: str) -> list[str]:
    """The names in `ip netns list` output ("name (id: 3)" lines)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


# -- running them ---------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_sync(command: Sequence[str]) -> str:
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


async def run(command: Sequence[str], timeout_s: float = 10.0) -> str:
    """Run one `ip` command; its stdout, or NetnsError with its stderr."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise NetnsError(f"{' '.join(command)}: no answer in {timeout_s:g} s") from None
    if process.returncode != 0:
        raise NetnsError(f"{' '.join(command)}: {err.decode().strip() or process.returncode}")
    return out.decode()


def unavailable() -> str | None:
    """Why namespaces cannot be used here (not root, no `ip`, the kernel refuses), or None."""
    if os.geteuid() != 0:
        return "not root (network namespaces need CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "no `ip` command (Debian iproute2)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        _run_sync(("ip", "netns", "add", probe))
    except (NetnsError, OSError, subprocess.TimeoutExpired) as error:
        return f"`ip netns add` failed: {error}"
    try:
        _run_sync(("ip", "netns", "delete", probe))
    except (NetnsError, OSError, subprocess.TimeoutExpired) as error:
        return f"`ip netns delete` failed: {error}"
    return None


def remove_stale() -> list[str]:
    """Delete the project's namespaces left by processes that are gone; their names."""
    try:
        names = parse_netns_list(_run_sync(("ip", "netns", "list")))
    except (NetnsError, OSError, subprocess.TimeoutExpired):
        return []
    removed = []
    for name in stale(names, pid_alive):
        try:
            _run_sync(("ip", "netns", "delete", name))
        except (NetnsError, OSError, subprocess.TimeoutExpired) as error:
            log.warning("stale namespace %s not deleted: %s", name, error)
            continue
        removed.append(name)
    if removed:
        log.info("stale namespaces deleted: %s", ", ".join(removed))
    return removed


def networks_in_use() -> list[ipaddress.IPv4Network]:
    """The root namespace's IPv4 routes (every table) and addresses."""
    text = _run_sync(("ip", "-4", "-o", "route", "show", "table", "all"))
    text += _run_sync(("ip", "-4", "-o", "addr", "show"))
    return networks_in(text)


_serials = itertools.count(1)
_claimed: set[ipaddress.IPv4Network] = set()
"""The blocks of this process's topologies planned and not yet removed (their routes may not
exist yet)."""


class SiteNamespaces:
    """`async with SiteNamespaces.for_sites(names)`: the topology built (stale leftovers of dead
    owners removed first); every namespace deleted on exit, also when building failed."""

    def __init__(self, plan: NetPlan) -> None:
        self.plan = plan
        self._cuts: set[frozenset[str]] = set()
        self._isolated: set[str] = set()

    @classmethod
    def for_sites(cls, sites: Sequence[str]) -> SiteNamespaces:
        """Plan for these sites in a block the root namespace does not use (reads its routes)."""
        remove_stale()
        in_use = [*networks_in_use(), *_claimed]
        plan = plan_network(sites, os.getpid(), next(_serials), in_use)
        _claimed.add(plan.block)
        return cls(plan)

    def address(self, site: str) -> str:
        return self.plan.of(site).address

    def prefix(self, site: str) -> list[str]:
        return exec_prefix(self.plan, site)

    @property
    def cuts(self) -> frozenset[frozenset[str]]:
        return frozenset(self._cuts)

    async def cut(self, a: str, b: str) -> None:
        """Cut every link between two sites (a cut that exists already stays as it is)."""
        pair = frozenset((a, b))
        if pair in self._cuts:
            return
        for command in cut_commands(self.plan, a, b):
            await run(command)
        self._cuts.add(pair)
        log.info("link %s <-> %s cut (blackhole routes)", a, b)

    async def heal(self, a: str, b: str) -> None:
        pair = frozenset((a, b))
        if pair not in self._cuts:
            return
        for command in cut_commands(self.plan, a, b, heal=True):
            await run(command)
        self._cuts.discard(pair)
        log.info("link %s <-> %s healed", a, b)

    async def isolate(self, site: str) -> None:
        for command in isolate_commands(self.plan, site):
            await run(command)
        self._isolated.add(site)

    async def rejoin(self, site: str) -> None:
        for command in isolate_commands(self.plan, site, heal=True):
            await run(command)
        self._isolated.discard(site)

    async def heal_all(self) -> None:
        for pair in sorted(self._cuts, key=sorted):
            await self.heal(*sorted(pair))
        for site in sorted(self._isolated):
            await self.rejoin(site)

    async def __aenter__(self) -> SiteNamespaces:
        try:
            for command in setup_commands(self.plan):
                await run(command)
        except BaseException:
            await self._teardown()
            raise
        log.info(
            "network namespaces %s up: %s",
            self.plan.hub.removesuffix("-hub"),
            ", ".join(f"{s.site}={s.address}" for s in self.plan.sites),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._teardown()

    async def _teardown(self) -> None:
        try:
            existing = set(parse_netns_list(await run(("ip", "netns", "list"))))
        except (NetnsError, OSError) as error:
            log.warning("namespaces of %s not listed: %s", self.plan.hub, error)
            existing = set(self.plan.namespaces)
        for command in teardown_commands(self.plan):
            if command[1] == "netns" and command[-1] not in existing:
                continue
            try:
                await run(command)
            except NetnsError as error:
                if command[1] == "netns":  # a root device already gone is no matter
                    log.warning("namespace not deleted: %s", error)
        self._cuts.clear()
        self._isolated.clear()
        _claimed.discard(self.plan.block)
