"""Pure parts: what a body asks for, model id matching, the client address behind trusted proxies."""

from __future__ import annotations

import json

import pytest

from keyplane import errors
from keyplane.access import inspect, ip
from keyplane.access.policy import ModelPolicy, Policies


def test_inspect_sees_hidden_tools_and_models():
    a = inspect.read(
        json.dumps(
            {
                "model": "m",
                "input": [{"type": "mcp_approval_response"}],
                "tools": json.dumps(json.dumps([{"type": "Web-Search"}])),
                "tool_resources": {"file_search": {}},
                "x": {"model": "other"},
            }
        ).encode()
    )
    assert a.tools == {"mcp", "web_search", "file_search"} and a.models == {"m", "other"}
    assert inspect.read(b'{"a": {"k": 1, "k": 2}}').duplicated == {"k"}
    assert inspect.read(b'{"prompt": {"id": "pmpt_1"}}').stored_prompt
    assert inspect.read(b'{"tools": [{"type": "function"}], "tool_choice": "auto"}').tools == set()
    with pytest.raises(inspect.Unreadable):
        inspect.read(b"{not json")
    with pytest.raises(inspect.Unreadable):
        inspect.read(b"[" * 100_000 + b"]" * 100_000)


def test_model_matching():
    deny = ModelPolicy("deny_list", ("gpt-4o", "o1*"))
    assert not deny.allows("gpt-4o-2024-05-13") and not deny.allows(" GPT-4O ") and not deny.allows("o1-pro")
    assert deny.allows("gpt-4o-mini") and deny.allows("gpt-4.1")
    allow = ModelPolicy("allow_list", ("gpt-4o-mini",))
    assert allow.allows("gpt-4o-mini-2024-07-18") and not allow.allows("gpt-4o-mini-tts-evil")


def test_containers_and_runs():
    p = Policies(
        models={("project", "p"): ModelPolicy("allow_list", ("gpt-4o-mini",))},
        disabled_tools={("project", "p"): frozenset({"code_interpreter"})},
    )
    with pytest.raises(errors.APIError) as e:
        p.check_request("p", "k", "/v1/containers", "POST", None, True, b'{"name": "c"}', True)
    assert e.value.code == "tool_not_permitted"
    p.check_request(
        "p", "k", "/v1/threads/t/runs/r/submit_tool_outputs", "POST", None, True, b'{"tool_outputs": []}', True
    )
    with pytest.raises(errors.APIError) as e:
        p.check_request("p", "k", "/v1/threads/t/runs", "POST", None, True, b'{"assistant_id": "a", "tools": []}', True)
    assert e.value.code == "model_not_permitted"


def test_batches_are_refused_under_a_policy_unless_billing_reads_their_files():
    """A gateway without billing cannot read a batch's input file (the gateway tests run with billing, which
    holds each line to the policy: tests/access/test_model_tools.py): its batches are refused while a policy is set."""
    body = b'{"input_file_id": "file-1", "endpoint": "/v1/chat/completions", "completion_window": "24h"}'
    p = Policies(models={("project", "p"): ModelPolicy("deny_list", ("gpt-4o",))})
    with pytest.raises(errors.APIError) as e:
        p.check_request("p", "k", "/v1/batches", "POST", None, True, body, True)
    assert e.value.code == "batch_not_permitted"
    p.batches_checked = lambda: True
    p.check_request("p", "k", "/v1/batches", "POST", None, True, body, True)  # left to admission's check_batch
    Policies().check_request("p", "k", "/v1/batches", "POST", None, True, body, True)  # no policy: nothing to hold


def test_client_address():
    trusted = ip.parse_cidrs(["10.0.0.0/8"])
    xff = [(b"x-forwarded-for", b"1.2.3.4, 10.0.0.9")]
    assert ip.client_address("198.51.100.1", xff, trusted) == "198.51.100.1"  # not a trusted peer
    assert ip.client_address("10.0.0.1", xff, trusted) == "1.2.3.4"
    assert ip.client_address("10.0.0.1", [(b"forwarded", b'for="[2001:db8::1]:80"')], trusted) == "2001:db8::1"
    assert ip.client_address("::ffff:192.0.2.1", [], ()) == "192.0.2.1"
    assert ip.client_address("10.0.0.1", [(b"x-forwarded-for", b", ".join([b"1.1.1.1"] * 40))], trusted) == "unknown"
    assert not ip.allows(ip.parse_cidrs(["0.0.0.0/0"]), "unknown")


def test_requests_wait_for_policies_as_new_as_the_snapshot():
    import asyncio

    async def go() -> None:
        p = Policies()
        snapshot_rev = [5]
        p.behind = lambda rev: snapshot_rev[0] > rev
        with pytest.raises(errors.APIError) as e:  # never caught up: fail closed, retryable
            await p.current(wait=0.05)
        assert e.value.status == 503
        waiter = asyncio.ensure_future(p.current(wait=5))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        p.revision = 5  # what load() does after reading the rows
        event, p._reloaded = p._reloaded, asyncio.Event()
        event.set()
        await asyncio.wait_for(waiter, 1)

    asyncio.run(go())


def test_model_spellings():
    deny = ModelPolicy("deny_list", ("gpt-4o",))
    for m in (
        "ft:gpt-4o-2024-08-06:acme::x",
        "FT:GPT-4O:acme::x",
        "openai/gpt-4o",
        "models/gpt-4o-2024-08-06",
        "\uff47\uff50\uff54-4o",
        "gpt-4o\u200b",
        "gpt-4\u043e",
        "gpt-4o\x00",
    ):
        assert not deny.allows(m), m
    assert deny.allows("gpt-4o-mini") and deny.allows("ft:gpt-4o-mini-2024-07-18:acme::x")
    allow = ModelPolicy("allow_list", ("gpt-4o-mini", "gpt-4"))
    assert allow.allows("ft:gpt-4o-mini-2024-07-18:acme::x") and allow.allows("gpt-4-1106-preview")
    for m in ("gpt-4o-mini-2024-07-18-x", "gpt-4o-mini-0000-x", "openai/gpt-4o-mini", "ft:gpt-4o:acme::x", "gpt-4-"):
        assert not allow.allows(m), m


def test_cidr_parsing():
    with pytest.raises(ValueError, match="host bits"):
        ip.parse_cidrs(["10.0.0.5/8"])  # meant the host or the range? never silently the whole /8
    assert ip.parse_cidrs(["10.0.0.5/8"], strict=False) == ip.parse_cidrs(["10.0.0.0/8"])
    # An IPv4-mapped range is its IPv4 range: client addresses are compared as IPv4.
    mapped = ip.parse_cidrs(["::ffff:10.0.0.0/104"])
    assert ip.allows(mapped, "10.1.2.3") and ip.allows(mapped, "::ffff:10.1.2.3")
    assert (
        ip.client_address("::ffff:127.0.0.1", [(b"x-forwarded-for", b"10.1.2.3")], ip.parse_cidrs(["::ffff:127.0.0.1"]))
        == "10.1.2.3"
    )
    # A zone id is local to the sender: not part of the address.
    assert ip.client_address("fe80::1%eth0", [], ()) == "fe80::1"


def test_trusted_proxies_with_host_bits_is_a_config_error(tmp_path):
    import asyncio

    from keyplane import access
    from keyplane.config import ConfigError

    class Rt:
        class settings:
            trusted_proxies = "10.0.0.5/8"

    with pytest.raises(ConfigError, match=r"trusted_proxies.*host bits"):
        asyncio.run(access.start(Rt()))


def test_forwarded_headers_must_agree():
    trusted = ip.parse_cidrs(["10.0.0.0/8"])
    # A proxy that maintains only Forwarded passes the client's own X-Forwarded-For through: they disagree.
    spoof = [(b"x-forwarded-for", b"192.0.2.1"), (b"forwarded", b"for=198.51.100.7")]
    got = ip.client_address("10.0.0.1", spoof, trusted)
    assert "198.51.100.7" in got and not ip.allows(ip.parse_cidrs(["192.0.2.0/24"]), got)
    both = [(b"x-forwarded-for", b"198.51.100.7, 10.0.0.2"), (b"forwarded", b'for="198.51.100.7:1234", for=10.0.0.2')]
    assert ip.client_address("10.0.0.1", both, trusted) == "198.51.100.7"
    # A quoted Forwarded value that swallows a comma cannot hide the element the proxy appended.
    assert (
        ip.client_address("10.0.0.1", [(b"forwarded", b'for="192.0.2.1, for=192.0.2.2", for=198.51.100.7')], trusted)
        == "198.51.100.7"
    )
    assert ip.client_address("10.0.0.1", [(b"forwarded", b"for=_hidden")], trusted) == "_hidden"
    assert ip.client_address("10.0.0.1", [(b"x-forwarded-for", b"")], trusted) == "unknown"


def test_runs_without_tools_and_requests_without_a_model():
    p = Policies(
        models={("project", "p"): ModelPolicy("deny_list", ("gpt-image-1",))},
        disabled_tools={("key", "k"): frozenset({"file_search"})},
    )
    for body in (
        b'{"assistant_id": "a", "model": "gpt-4o"}',
        b'{"assistant_id": "a", "model": "gpt-4o", "tools": null}',
    ):
        with pytest.raises(errors.APIError) as e:
            p.check_request("p", "k", "/v1/threads/t/runs", "POST", None, True, body, True)
        assert e.value.code == "tool_not_permitted" and "file_search" in e.value.message
    p.check_request(
        "p",
        "k",
        "/v1/threads/t/runs",
        "POST",
        None,
        True,
        b'{"assistant_id": "a", "model": "gpt-4o", "tools": []}',
        True,
    )
    with pytest.raises(errors.APIError) as e:
        p.check_request("p", "k", "/v1/images/generations", "POST", None, True, b'{"prompt": "x"}', True)
    assert e.value.code == "model_not_permitted" and "project p" in e.value.message
    p.check_request("p", "k", "/v1/images/generations", "POST", "dall-e-3", True, b'{"prompt": "x"}', True)
    assert p.model_visible("p", "k", "gpt-4o") and not p.model_visible("p", "k", "gpt-image-1-2025-04-15")
    p.check_request("p", "k", "/v1/moderations", "POST", None, False, b'{"input": "x"}', True)  # free: no spend
