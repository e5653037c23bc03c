"""IP allowlists: the client's address, and whether an organization's, project's or key's CIDR list allows it.

The address is the socket's peer. Only when that peer is one of the configured ``trusted_proxies`` are
``X-Forwarded-For`` (or, without it, ``Forwarded``) read, right to left, skipping trusted proxies: the first
address that is not a trusted proxy is the client. Anyone can write those headers; only the proxies that
append to them are believed. An address that cannot be read is refused wherever an allowlist applies.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_CIDRS: Final = 1000
_MAX_HOPS: Final = 32


def parse_cidrs(values: Sequence[str]) -> tuple[IPNet, ...]:
    """CIDRs (or single addresses); ValueError naming the bad one."""
    out: list[IPNet] = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ValueError(f"'{v}' is not an IP address or CIDR range (e.g. 203.0.113.0/24).") from None
    return tuple(out)


def parse_address(value: str) -> IPAddr | None:
    v = value.strip().strip('"')
    if v.startswith("["):  # Forwarded: for="[2001:db8::1]:4711"
        v = v[1:].split("]", 1)[0]
    elif v.count(":") == 1:  # 192.0.2.1:4711
        v = v.split(":", 1)[0]
    try:
        a = ipaddress.ip_address(v)
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return a.ipv4_mapped
    return a


def _forwarded_for(value: str) -> list[str]:
    out = []
    for element in value.split(","):
        for pair in element.split(";"):
            k, _, v = pair.partition("=")
            if k.strip().lower() == "for":
                out.append(v)
    return out


def client_address(peer: str | None, headers: list[tuple[bytes, bytes]], trusted: tuple[IPNet, ...]) -> str:
    """The client's address as text ("unknown" when none can be read)."""
    addr = parse_address(peer) if peer else None
    if addr is None:
        return peer or "unknown"
    if not trusted or not any(addr in n for n in trusted):
        return str(addr)
    xff = [v.decode("latin-1") for k, v in headers if k == b"x-forwarded-for"]
    hops: list[str] = []
    if xff:
        for v in xff:  # several headers are one list, in order
            hops.extend(v.split(","))
    else:
        for v in (v.decode("latin-1") for k, v in headers if k == b"forwarded"):
            hops.extend(_forwarded_for(v))
    if not hops:
        return str(addr)
    if len(hops) > _MAX_HOPS:
        return "unknown"
    for hop in reversed(hops):
        a = parse_address(hop)
        if a is None:
            return hop.strip()[:64] or "unknown"  # unreadable: refused where a list applies
        addr = a
        if not any(a in n for n in trusted):
            return str(a)
    return str(addr)  # every hop a trusted proxy: the farthest one


def allows(cidrs: tuple[IPNet, ...], address: str) -> bool:
    a = parse_address(address)
    return a is not None and any(a in n for n in cidrs)
