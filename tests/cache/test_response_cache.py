"""The exact response cache through the real app and the official SDK, on memory and on Redis.

Hits, misses, TTL expiry (a FakeClock, no sleeping), project isolation, the organization-wide
opt-in, bypass, and what is never cached (streams, non-deterministic requests); a hit is settled as
free and recorded as cached tokens.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from keyplane.clock import FakeClock
from keyplane.testing import FakeUpstream
from tests.cache.conftest import upstreams
from tests.support import RunningServer

MSG = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def config(fake: FakeUpstream, cache: str, backend: str) -> str:
    return upstreams(fake) + f'\n[cache]\nbackend = "{backend}"\nttl = "10m"\n' + cache


def settled(srv: RunningServer) -> list:
    """Every request's context as the usage journal saw it (a settle step after metering's)."""
    out: list = []

    async def keep(ctx) -> None:
        out.append(ctx)

    srv.app.runtime.pipeline.taps.append(keep)
    return out


def client(srv: RunningServer, key: str | None = None, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.v1, api_key=key or srv.api_key, max_retries=0, default_headers=headers)


def ask(c: openai.OpenAI, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 5)
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, **kw)
    return raw.headers.get("x-keyplane-cache"), raw.parse()


def second_project(srv: RunningServer, name: str) -> tuple[str, str]:
    h = {"Authorization": f"Bearer {srv.admin_key}"}
    p = httpx.post(srv.v1 + "/organization/projects", json={"name": name}, headers=h).json()
    k = httpx.post(
        srv.v1 + f"/organization/projects/{p['id']}/api_keys", json={"name": "k", "permissions": "all"}, headers=h
    ).json()
    return p["id"], k["value"]


def test_identical_deterministic_requests_hit(make_gateway, fake, backend):
    srv = make_gateway(config(fake, 'projects = ["*"]\n', backend), redis=backend == "redis")
    seen = settled(srv)
    c = client(srv)
    h1, first = ask(c)
    h2, second = ask(c)
    assert (h1, h2) == ("miss", "hit")
    assert second.model_dump() == first.model_dump()
    assert len(fake.model_requests()) == 1
    # A seed makes a sampled request deterministic too.
    assert [ask(c, temperature=0.7, seed=42)[0] for _ in range(2)] == ["miss", "hit"]
    # The hit is free and recorded as cached: prompt tokens all cached, nothing generated.
    miss, hit = seen[0], seen[1]
    assert miss.cost_micros > 0 and miss.upstream == "fake"
    assert hit.cache == "hit" and hit.upstream == "keyplane-cache" and hit.status == 200
    assert (hit.prompt_tokens, hit.cached_tokens, hit.completion_tokens, hit.cost_micros) == (
        first.usage.prompt_tokens,
        first.usage.prompt_tokens,
        0,
        0,
    )
    rec = hit.record
    assert (rec.cached_tokens, rec.cost_micros) == (first.usage.prompt_tokens, 0)


def test_different_requests_miss(make_gateway, fake, backend):
    srv = make_gateway(config(fake, 'projects = ["*"]\n', backend), redis=backend == "redis")
    c = client(srv)
    assert ask(c)[0] == "miss"
    assert ask(c, max_tokens=6)[0] == "miss"
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", temperature=0, messages=[{"role": "user", "content": "Other."}]
    )
    assert raw.headers["x-keyplane-cache"] == "miss"
    assert len(fake.model_requests()) == 3
    # What else is forwarded and can change the answer is part of the key: the query, other headers.
    assert ask(c, extra_query={"api-version": "2"})[0] == "miss"
    assert ask(c, extra_headers={"OpenAI-Beta": "assistants=v2"})[0] == "miss"
    # ... but not the SDK's telemetry headers or its user agent.
    assert ask(c, extra_headers={"User-Agent": "other/1.0", "X-Stainless-Retry-Count": "1"})[0] == "hit"


def test_entries_expire_after_the_ttl(make_gateway, fake, backend):
    clock = FakeClock()
    srv = make_gateway(config(fake, 'projects = ["*"]\n', backend), clock=clock, redis=backend == "redis")
    c = client(srv)
    assert ask(c)[0] == "miss"
    clock.advance(599)
    assert ask(c)[0] == "hit"
    clock.advance(2)
    assert ask(c)[0] == "miss"
    assert ask(c)[0] == "hit"
    assert len(fake.model_requests()) == 2


def test_never_across_projects(make_gateway, fake, backend):
    srv = make_gateway(config(fake, 'projects = ["*"]\n', backend), redis=backend == "redis")
    _, other_key = second_project(srv, "other")
    assert ask(client(srv))[0] == "miss"
    assert ask(client(srv, other_key))[0] == "miss"
    assert ask(client(srv, other_key))[0] == "hit"
    assert len(fake.model_requests()) == 2


def test_org_wide_cache_is_shared_by_opted_in_projects_only(make_gateway, fake, backend):
    srv = make_gateway(
        config(fake, 'org_wide_projects = ["Default project", "shared"]\nprojects = ["alone"]\n', backend),
        redis=backend == "redis",
    )
    project_name = srv.app.runtime.snapshot.projects[srv.project_id].name
    assert project_name == "Default project", project_name
    _, shared_key = second_project(srv, "shared")
    _, alone_key = second_project(srv, "alone")
    assert ask(client(srv))[0] == "miss"
    assert ask(client(srv, shared_key))[0] == "hit"  # another org-wide project: shared
    assert ask(client(srv, alone_key))[0] == "miss"  # opted in, but its own namespace
    assert len(fake.model_requests()) == 2


def test_bypass_and_use_headers(make_gateway, fake, backend):
    srv = make_gateway(config(fake, 'projects = ["nobody"]\nenabled = true\n', backend), redis=backend == "redis")
    assert ask(client(srv))[0] is None  # not opted in: untouched, no header
    use = client(srv, **{"x-keyplane-cache": "use"})
    assert ask(use)[0] == "miss"
    assert ask(use)[0] == "hit"
    assert ask(client(srv, **{"x-keyplane-cache": "bypass"}))[0] is None  # not opted in: still untouched
    srv2 = make_gateway(config(fake, 'projects = ["*"]\n', backend), redis=backend == "redis")
    c = client(srv2)
    assert ask(c)[0] == "miss"
    assert ask(client(srv2, **{"x-keyplane-cache": "bypass"}))[0] == "bypass"
    assert ask(c)[0] == "hit"


def test_key_opt_in(make_gateway, fake, backend, template_home):
    import json

    key_id = json.loads((template_home / "init.json").read_text())["api_key_id"]
    srv = make_gateway(config(fake, f'keys = ["{key_id}"]\n', backend), redis=backend == "redis")
    assert ask(client(srv))[0] == "miss"
    assert ask(client(srv))[0] == "hit"
    other_key = httpx.post(
        srv.v1 + f"/organization/projects/{srv.project_id}/api_keys",
        json={"name": "k2", "permissions": "all"},
        headers={"Authorization": f"Bearer {srv.admin_key}"},
    ).json()["value"]
    assert ask(client(srv, other_key))[0] is None  # another key of the project, not listed


def test_streams_and_sampled_requests_are_never_cached(make_gateway, fake, backend):
    srv = make_gateway(config(fake, 'projects = ["*"]\n', backend), redis=backend == "redis")
    c = client(srv)
    for _ in range(2):
        raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, temperature=0, stream=True)
        assert raw.headers["x-keyplane-cache"] == "bypass"
        assert "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices)
    assert [ask(c, temperature=0.7)[0] for _ in range(2)] == ["bypass", "bypass"]
    assert [ask(c, temperature=None)[0] for _ in range(2)] == ["bypass", "bypass"]  # default temperature: 1
    # The non-streaming twin of the stream was not answered from it either.
    assert ask(c)[0] == "miss"
    assert len(fake.model_requests()) == 7


def test_errors_are_not_cached(make_gateway, fake, backend):
    from keyplane.testing import Behaviour

    srv = make_gateway(config(fake, 'projects = ["*"]\n', backend), redis=backend == "redis")
    fake.push(Behaviour(status=400))
    with pytest.raises(openai.BadRequestError):
        ask(client(srv))
    assert ask(client(srv))[0] == "miss"
    assert ask(client(srv))[0] == "hit"


def test_embeddings_are_deterministic(make_gateway, fake, backend):
    srv = make_gateway(config(fake, 'projects = ["*"]\n', backend), redis=backend == "redis")
    c = client(srv)
    got = [c.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hello") for _ in range(2)]
    assert [r.headers["x-keyplane-cache"] for r in got] == ["miss", "hit"]
    assert got[0].parse().data[0].embedding == got[1].parse().data[0].embedding


def test_hit_counts_as_a_request_for_rate_limits(make_gateway, fake, backend):
    srv = make_gateway(config(fake, 'projects = ["*"]\n', backend), redis=backend == "redis")
    h = {"Authorization": f"Bearer {srv.admin_key}"}
    rl = httpx.get(srv.v1 + f"/organization/projects/{srv.project_id}/rate_limits", headers=h).json()["data"]
    rid = next(r["id"] for r in rl if r["model"] == "gpt-4o-mini")
    r = httpx.post(
        srv.v1 + f"/organization/projects/{srv.project_id}/rate_limits/{rid}",
        json={"max_requests_per_1_minute": 3, "max_tokens_per_1_minute": 1000},
        headers=h,
    )
    assert r.status_code == 200, r.text
    c = client(srv)
    raws = [
        c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, max_tokens=5, temperature=0)
        for _ in range(3)
    ]
    assert [x.headers["x-keyplane-cache"] for x in raws] == ["miss", "hit", "hit"]
    # Each hit took a request ...
    assert [int(x.headers["x-ratelimit-remaining-requests"]) for x in raws] == [2, 1, 0]
    with pytest.raises(openai.RateLimitError):
        ask(c)
    # ... and gave back the tokens reserved for it: the buckets hold only the miss's tokens.
    # (Each header is read at admission, with that request's estimate reserved; had the first hit kept
    # its tokens, the second hit would show that many fewer.)
    remaining = [int(x.headers["x-ratelimit-remaining-tokens"]) for x in raws]
    assert remaining[1] < remaining[0] and remaining[2] >= remaining[1]
