"""Pure parts: what a body asks for, model id matching, the client address behind trusted proxies."""

from __future__ import annotations

import json

import pytest

from keyplane import errors
from keyplane.access import inspect, ip
from keyplane.access.policy import ModelPolicy, Policies


def test_inspect_sees_hidden_tools_and_models():
    a = inspect.read(json.dumps({"model": "m", "input": [{"type": "mcp_approval_response"}],
                                 "tools": json.dumps(json.dumps([{"type": "Web-Search"}])),
                                 "tool_resources": {"file_search": {}}, "x": {"model": "other"}}).encode())
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
    p = Policies(models={("project", "p"): ModelPolicy("allow_list", ("gpt-4o-mini",))},
                 disabled_tools={("project", "p"): frozenset({"code_interpreter"})})
    with pytest.raises(errors.APIError) as e:
        p.check_request("p", "k", "/v1/containers", "POST", None, True, b'{"name": "c"}', True)
    assert e.value.code == "tool_not_permitted"
    p.check_request("p", "k", "/v1/threads/t/runs/r/submit_tool_outputs", "POST", None, True,
                    b'{"tool_outputs": []}', True)
    with pytest.raises(errors.APIError) as e:
        p.check_request("p", "k", "/v1/threads/t/runs", "POST", None, True, b'{"assistant_id": "a"}', True)
    assert e.value.code == "model_not_permitted"


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
