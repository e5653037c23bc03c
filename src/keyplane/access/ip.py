"""IP allowlists: the client's address, and whether an organization's, project's or key's CIDR list allows it.

The address is the socket's peer. Only when that peer is one of the configured ``trusted_proxies`` are
``X-Forwarded-For`` and ``Forwarded`` read, right to left, skipping trusted proxies: the first address that
is not a trusted proxy is the client (both present: they must agree). Anyone can write those headers; only
the proxies that append to them are believed. An address that cannot be read is refused wherever an
allowlist applies.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_CIDRS: Final = 1000
_MAX_HOPS: Final = 32


def parse_cidrs(values: Sequence[str], strict: bool = True) -> tuple[IPNet, ...]:
    """CIDRs (or single addresses); ValueError naming the bad one.

    ``strict``: a range with host bits set (``10.0.0.5/8``) is refused rather than silently widened to
    ``10.0.0.0/8`` (meant a host? a typo?); stored lists, already normal, are read with ``strict=False``.
    An IPv4-mapped IPv6 range (``::ffff:10.0.0.0/104``) is its IPv4 range: addresses are compared as IPv4.
    """
    out: list[IPNet] = []
    for v in values:
        text = v.strip()
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"'{v}' is not an IP address or CIDR range (e.g. 203.0.113.0/24).") from None
        if strict and "/" in text and net.network_address != ipaddress.ip_address(text.split("/", 1)[0]):
            raise ValueError(
                f"'{v}' has host bits set: write {net} for the range, or "
                f"{text.split('/', 1)[0]}/{net.max_prefixlen} for the one address."
            )
        out.append(_unmapped(net))
    return tuple(out)


def _unmapped(net: IPNet) -> IPNet:
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


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
    if isinstance(a, ipaddress.IPv6Address):
        if a.scope_id is not None:  # fe80::1%eth0: the zone is local to the sender, not part of the address
            a = ipaddress.IPv6Address(v.split("%", 1)[0])
        if a.ipv4_mapped is not None:
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
    """The client's address as text ("unknown" when none can be read).

    Behind a trusted proxy, ``X-Forwarded-For`` and ``Forwarded`` are each read right to left. A proxy
    appends to the one it maintains and passes the other through as the client wrote it, so when both
    are present they must name the same client: otherwise one of them is the client's own claim and the
    address is unreadable (refused wherever a list applies)."""
    addr = parse_address(peer) if peer else None
    if addr is None:
        return peer or "unknown"
    if not trusted or not any(addr in n for n in trusted):
        return str(addr)
    xff: list[str] = []
    fwd: list[str] = []
    for k, v in headers:
        if k == b"x-forwarded-for":  # several headers are one list, in order
            xff.extend(v.decode("latin-1").split(","))
        elif k == b"forwarded":
            fwd.extend(_forwarded_for(v.decode("latin-1")))
    if not xff and not fwd:
        return str(addr)
    seen = [_rightmost(hops, addr, trusted) for hops in (xff, fwd) if hops]
    if len(seen) == 2 and seen[0] != seen[1]:
        return f"unknown (X-Forwarded-For says {seen[0]}, Forwarded says {seen[1]})"
    return seen[0]


def _rightmost(hops: list[str], addr: IPAddr, trusted: tuple[IPNet, ...]) -> str:
    """The first address from the right that is not a trusted proxy (the farthest one if all are)."""
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
