"""Metrics: bounded labels, and the request-path sums land in prometheus_client exactly as observe() would."""

from __future__ import annotations

import random
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from keyplane.config import Upstream
from keyplane.usage.metrics import LATENCY_BUCKETS, MAX_GLOB_MODELS, MAX_REASONS, Metrics, ModelLabels


def _settings(**kw):
    base = dict(
        metrics_models="house-model",
        metrics_key_labels=False,
        file=SimpleNamespace(
            prices={"gpt-4o-mini": None, "text-embedding-*": None},
            upstreams=[Upstream(name="u", base_url="http://x/v1", models=["gpt-4o", "llama-*"])],
        ),
    )
    base.update(kw)
    return SimpleNamespace(**base)


def test_model_labels_are_bounded():
    m = ModelLabels(_settings())
    assert m.label("gpt-4o-mini", False) == "gpt-4o-mini"  # priced
    assert m.label("gpt-4o", False) == "gpt-4o" and m.label("house-model", True) == "house-model"
    assert m.label("demo-echo", True) == "demo-echo" and m.label(None, True) == "none"
    assert m.label("llama-3-8b", False) == "other"  # a pattern admits a name only once answered
    assert m.label("llama-3-8b", True) == "llama-3-8b" and m.label("llama-3-8b", False) == "llama-3-8b"
    assert m.label("mystery", True) == "other"  # matches nothing configured
    for i in range(MAX_GLOB_MODELS * 2):
        m.label(f"llama-junk-{i}", True)
    assert len(m.admitted) == MAX_GLOB_MODELS and m.label("llama-one-more", True) == "other"


def _ctx(i, rnd, status=200, **kw):
    d = dict(
        status=status,
        model="gpt-4o-mini",
        project_id="proj_1",
        key=SimpleNamespace(id="key_1"),
        prompt_tokens=rnd.randint(0, 900),
        cached_tokens=rnd.randint(0, 9),
        completion_tokens=rnd.randint(0, 99),
        cost_micros=rnd.randint(0, 5000),
        latency_ms=rnd.uniform(0, 400_000),
        ttft_ms=rnd.choice([None, 3.5, 90.0]),
        disconnected=False,
        upstream="u",
        attempts=1,
        error=None,
    )
    d.update(kw)
    return SimpleNamespace(**d)


def test_flushed_sums_equal_direct_observations():
    rnd = random.Random(3)
    m = Metrics(_settings())
    ref_reg = CollectorRegistry()
    ref = Histogram("ref_seconds", "x", buckets=LATENCY_BUCKETS, registry=ref_reg)
    ctxs = [_ctx(i, rnd) for i in range(500)]
    ctxs += [_ctx(i, rnd, latency_ms=b * 1000) for i, b in enumerate(LATENCY_BUCKETS)]  # exactly on the bounds
    for i, c in enumerate(ctxs):
        m.observe(c, "completions")
        ref.observe(c.latency_ms / 1000)
        if i % 97 == 0:
            m.flush()
    m.flush()
    ours = {
        (s.name, s.labels.get("le")): s.value
        for f in m.registry.collect()
        for s in f.samples
        if s.name.startswith("keyplane_request_duration_seconds")
    }
    theirs = {
        (s.name.replace("ref_seconds", "keyplane_request_duration_seconds"), s.labels.get("le")): s.value
        for f in ref_reg.collect()
        for s in f.samples
        if not s.name.endswith("_created")
    }
    ours = {k: v for k, v in ours.items() if not k[0].endswith("_created")}
    assert ours.keys() == theirs.keys()
    for k, v in theirs.items():
        assert abs(ours[k] - v) < 1e-6 * max(1.0, abs(v)), k
    text = generate_latest(m.registry).decode()
    labels = 'kind="completions",model="gpt-4o-mini",project_id="proj_1",status_class="2xx"'
    assert f"keyplane_requests_total{{{labels}}} {len(ctxs)}.0" in text
    tokens = sum(c.prompt_tokens for c in ctxs)
    assert f'keyplane_tokens_total{{model="gpt-4o-mini",project_id="proj_1",type="input"}} {tokens}.0' in text


def test_rare_paths_and_bounded_reasons():
    rnd = random.Random(1)
    m = Metrics(_settings())
    m.observe(_ctx(0, rnd, status=502, upstream="u", attempts=3), "completions")
    m.observe(_ctx(0, rnd, status=503, upstream=None, attempts=0, error="upstream_unavailable"), "completions")
    m.observe(_ctx(0, rnd, status=200, disconnected=True), "completions")
    for i in range(MAX_REASONS + 10):
        m.observe(_ctx(0, rnd, status=429, upstream=None, attempts=0, error=f"Reason {i}!"), "completions")
    m.flush()
    text = generate_latest(m.registry).decode()
    assert 'keyplane_upstream_errors_total{status_class="5xx",upstream="u"} 1.0' in text
    assert 'keyplane_upstream_errors_total{status_class="5xx",upstream="none"} 1.0' in text
    assert 'keyplane_upstream_retries_total{upstream="u"} 2.0' in text
    assert 'keyplane_client_disconnects_total{model="gpt-4o-mini"} 1.0' in text
    assert 'keyplane_admission_rejections_total{reason="reason_0"} 1.0' in text
    assert 'keyplane_admission_rejections_total{reason="other"} 10.0' in text
