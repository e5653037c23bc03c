"""The two forms of the headers that go upstream say the same: header_block (keyplane's HTTP/1.1 client) writes, line
by line, exactly the pairs forward_headers gives aiohttp, for any client headers and any configured ones (a client
header of a configured name dropped whatever its case, hop-by-hop and credential headers dropped, the deployment's
key and configured headers appended)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.proxy.upstream import DROP_REQUEST, forward_headers, header_block

NAMES = [*sorted(DROP_REQUEST), b"content-type", b"x-tenant", b"api-version", b"user-agent", b"x-a"]
name = st.sampled_from(NAMES)
value = st.text(alphabet="abcXYZ019 -=;", max_size=8)
configured = st.dictionaries(st.sampled_from(["X-Tenant", "api-version", "x-a", "X-Extra"]), value, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(name, value), max_size=8), configured, st.sampled_from(["", "sk-up-123456789"]))
def test_the_block_is_the_forwarded_headers(client: list[tuple[bytes, str]], conf: dict[str, str], key: str) -> None:
    headers = [(k, v.encode()) for k, v in client]
    dep: Any = SimpleNamespace(api_key=key, config=SimpleNamespace(headers=conf))
    pairs = forward_headers(headers, dep)
    want = b"".join(k.encode("latin-1") + b": " + v.encode("latin-1") + b"\r\n" for k, v in pairs)
    assert header_block(headers, dep) == want


def test_a_configured_header_is_the_operators_whatever_the_case() -> None:
    """A client header of a configured name (the ASGI server lower-cases names; the operator may not) is dropped in
    both forms: only the configured value goes upstream."""
    headers = [(b"x-tenant", b"client-chosen"), (b"api-version", b"2099"), (b"content-type", b"application/json")]
    dep: Any = SimpleNamespace(
        api_key="sk-up-123456789", config=SimpleNamespace(headers={"X-Tenant": "ops", "API-Version": "2024"})
    )
    assert forward_headers(headers, dep) == [
        ("content-type", "application/json"),
        ("Authorization", "Bearer sk-up-123456789"),
        ("X-Tenant", "ops"),
        ("API-Version", "2024"),
    ]
    block = header_block(headers, dep)
    assert b"client-chosen" not in block and b"2099" not in block
    assert block.count(b"X-Tenant: ops\r\n") == 1 and block.count(b"API-Version: 2024\r\n") == 1
