"""Who may send the node SIP and how the trunk side answers: the trunk's settings. Pure."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sip import digest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class TrunkSettings:
    host: str
    """The address written in SDP and Via/Contact: where the trunk reaches this node."""
    allowed: tuple[Network, ...]
    """Trunk addresses (networks) that may send requests; others get 403."""
    credentials: digest.Credentials | None = None
    answer: str = "agent"
    """"agent": 200 OK when an agent answers (early media before); "arrival": 200 at once."""
    port: int = 5060

    def __post_init__(self) -> None:
        if self.answer not in ("agent", "arrival"):
            raise ValueError(f"answer must be agent or arrival, not {self.answer!r}")

    def allows(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.allowed)


def parse_allowed(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """Addresses or networks (CIDR) as written in the config; ValueError names a bad one."""
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None
    return tuple(networks)
