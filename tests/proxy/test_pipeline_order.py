"""The settle steps against the answer's bytes (keyplane.pipeline, proxy/handler.py ``_finish``): billing's settle,
the usage record and the taps run before the answer's last byte goes out (its cost settled and its record journaled
even if the client vanishes next); metering's and the kill switch's observe steps run after a JSON answer is
written (its client does not wait for them) and before a stream's last byte. Driven through the ASGI app on the
gateway's own loop, so the order of the steps and of the messages sent is seen exactly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import RunningServer

STEPS = (("billing", "settle"), ("usage", "record"), ("usage", "observe"), ("guard", "observe"))


@pytest.fixture
def events(gw: RunningServer) -> Iterator[list[str]]:
    """Each settle step and each message the app sends, in order, as ``feature.step`` / the message type."""
    out: list[str] = []
    pipeline = gw.app.runtime.pipeline
    wrapped: list[tuple[object, str]] = []
    for feature, step in STEPS:
        obj = getattr(pipeline, feature)
        assert obj is not None, f"the gateway runs without {feature}"
        inner = getattr(obj, step)

        async def noted(ctx: Any, inner: Any = inner, label: str = f"{feature}.{step}") -> None:
            out.append(label)
            await inner(ctx)

        def noted_now(ctx: Any, inner: Any = inner, label: str = f"{feature}.{step}") -> None:
            out.append(label)
            inner(ctx)  # an observing step is a plain call (keyplane.pipeline)

        # the instance's attribute hides the method until deleted below
        setattr(obj, step, noted_now if step == "observe" else noted)
        wrapped.append((obj, step))

    async def tap(ctx: Any) -> None:
        out.append("tap")

    pipeline.taps.append(tap)
    try:
        yield out
    finally:
        pipeline.taps.remove(tap)
        for obj, step in wrapped:
            delattr(obj, step)


async def _one(srv: RunningServer, body: dict[str, Any], out: list[str]) -> None:
    raw = json.dumps(body).encode()
    done = False

    async def receive() -> dict[str, Any]:
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": raw, "more_body": False}
        raise AssertionError("the app asked for more than the request")  # never: its disconnect watch is cancelled

    async def send(msg: dict[str, Any]) -> None:
        label = msg["type"]
        if label == "http.response.body" and msg.get("more_body"):
            label += " (more)"
        if not out or out[-1] != label:  # a stream's chunks as one entry
            out.append(label)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "headers": [
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer " + srv.api_key.encode()),
            (b"content-length", b"%d" % len(raw)),
        ],
    }
    await srv.app(scope, receive, send)


def test_a_json_answer_is_settled_and_recorded_before_it_is_written_and_observed_after(
    gw: RunningServer, events: list[str]
) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    gw.call(_one(gw, body, events))
    assert events == [
        "billing.settle",
        "usage.record",
        "tap",
        "http.response.start",
        "http.response.body",
        "usage.observe",
        "guard.observe",
    ]


def test_a_stream_is_settled_recorded_and_observed_before_its_last_byte(gw: RunningServer, events: list[str]) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}
    gw.call(_one(gw, body, events))
    assert events == [
        "http.response.start",
        "http.response.body (more)",
        "billing.settle",
        "usage.record",
        "usage.observe",
        "guard.observe",
        "tap",
        "http.response.body",
    ]
