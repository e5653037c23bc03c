"""Prefix-affinity routing end to end: keyplane in front of three fake replicas with prompt caches.

Multi-turn conversations stay on one replica (and find their prefix cached there), a hot prefix
spills over to the others instead of piling up, and a second keyplane with its own router state
places new prefixes exactly as the first one does.
"""

from __future__ import annotations

import concurrent.futures
import re

import httpx
import openai
import pytest

from keyplane.testing.fake_replica import FakeReplica
from tests.cache.conftest import upstreams
from tests.support import RunningServer

SYSTEM = "You are the support assistant of a bicycle shop. Our opening hours are 9 to 18. " * 12


@pytest.fixture(scope="module")
def replicas():
    reps = [FakeReplica(f"r{i}", cache_tokens=50_000).start_in_thread() for i in range(3)]
    yield reps
    for r in reps:
        r.stop_thread()


@pytest.fixture
def fakes(replicas):
    for r in replicas:
        r.reset()
    return replicas


def routed_config(fakes) -> str:
    return upstreams(*fakes) + '\n[models."gpt-*"]\nrouting = "prefix"\n'


def client(srv: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)


def chat(c: openai.OpenAI, messages, **kw):
    done = c.chat.completions.create(model="gpt-4o-mini", messages=messages, **kw)
    return done.system_fingerprint.removeprefix("fp_"), done


def test_conversations_stay_on_one_replica(make_gateway, fakes):
    srv = make_gateway(routed_config(fakes))
    c = client(srv)
    placed = {}
    for conv in range(6):
        msgs = [{"role": "system", "content": f"Conversation {conv}. " + SYSTEM}]
        where = []
        for turn in range(4):
            msgs.append({"role": "user", "content": f"Question {turn} of conversation {conv}: " + "why? " * 30})
            replica, done = chat(c, msgs)
            where.append(replica)
            if turn:  # the earlier turns are in that replica's cache
                assert done.usage.prompt_tokens_details.cached_tokens > done.usage.prompt_tokens / 2
            msgs.append({"role": "assistant", "content": done.choices[0].message.content})
        assert len(set(where)) == 1, where
        placed[conv] = where[0]
    assert len(set(placed.values())) > 1  # and conversations are spread over the replicas
    # The cache hit ratio metric shows it.
    metrics = httpx.get(srv.base_url + "/metrics", headers={"Authorization": f"Bearer {srv.admin_key}"}).text
    ratio = re.search(r'keyplane_prompt_cache_hit_ratio\{model="gpt-4o-mini"\} ([0-9.]+)', metrics)
    assert ratio is not None and float(ratio.group(1)) > 0.4
    assert 'keyplane_prefix_routing_decisions_total{decision="affinity",model="gpt-4o-mini"} 18.0' in metrics


def test_a_hot_prefix_spills_over(make_gateway, fakes):
    srv = make_gateway(routed_config(fakes))
    c = openai.OpenAI(
        base_url=srv.v1, api_key=srv.api_key, max_retries=0, default_headers={"x-fake-latency-ms": "400"}
    )  # the fakes answer slowly: requests overlap
    chat(c, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "warm up"}])
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        got = list(
            pool.map(
                lambda i: chat(
                    c, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"question {i}"}]
                )[0],
                range(12),
            )
        )
    counts = [got.count(f"r{i}") for i in range(3)]
    assert min(counts) > 0, counts  # every replica took some
    assert max(counts) <= 1.5 * 12 / 3 + 1, counts  # bounded: none took much more than its share


def test_a_second_keyplane_places_new_prefixes_alike(make_gateway, fakes):
    first = make_gateway(routed_config(fakes))
    second = make_gateway(routed_config(fakes))  # its own app, router and LRUs
    a, b = client(first), client(second)
    for i in range(12):
        msgs = [
            {"role": "system", "content": f"Tenant {i} has its own long instructions. " + SYSTEM},
            {"role": "user", "content": "hello"},
        ]
        assert chat(a, msgs)[0] == chat(b, msgs)[0]
    assert min(f.served for f in fakes) > 0
