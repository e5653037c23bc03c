# ruff: noqa: F811 - the fixtures shared from tests/identity and tests/realtime are parameters here
"""Week 49 red-team review of the Realtime relay (proxy/realtime.py, realtime_session.py): each test failed
while its hole was open. Real WebSockets, the official SDK where it applies, keyplane on SQLite."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from tests.proxy.conftest import record_settled, wait_for
from tests.realtime.conftest import (  # noqa: F401 - fake_rt and make_gateway: the fixtures, shared
    PRICED,
    TEST_MODEL,
    UPSTREAM_KEY_ENV,
    admin,
    fake_rt,
    make_gateway,
)
from tests.support import RunningServer, make_settings, start_server


def _url(srv: RunningServer, model: str = TEST_MODEL) -> str:
    return srv.base_url.replace("http://", "ws://") + f"/v1/realtime?model={model}"


def _hdr(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _until(ws: Any, kinds: tuple[str, ...], limit: int = 50) -> dict[str, Any]:
    for _ in range(limit):
        ev = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if ev.get("type") in kinds:
            return ev  # type: ignore[no-any-return]
    raise AssertionError(f"none of {kinds}")


def _model_refused(srv: RunningServer, model: str) -> bool:
    """Whether this instance's model permissions now refuse ``model`` to the gateway's own key."""
    from keyplane import errors

    access = srv.app.runtime.features.access
    assert access is not None
    try:
        access.check_request(srv.project_id, srv.init["api_key_id"], "/v1/realtime", "GET", model, False, b"", False)
    except errors.APIError:
        return True
    return False


# --- a parser differential: the upstream reads the first of two `type` keys --------------------------------


class FirstWinsUpstream:
    """A realtime upstream whose JSON parser keeps the FIRST of duplicated keys (as some parsers do), and
    answers a response.create with as many output tokens as its max_output_tokens lets it (1000 for "inf")."""

    def __init__(self) -> None:
        self.creates: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def main() -> None:
            server = await serve(self._handle, "127.0.0.1", 0)
            self.port = next(iter(server.sockets)).getsockname()[1]
            ready.set()
            await server.serve_forever()

        threading.Thread(target=lambda: self._loop.run_until_complete(main()), daemon=True).start()
        assert ready.wait(5)

    @staticmethod
    def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            out.setdefault(k, v)
        return out

    async def _handle(self, ws: ServerConnection) -> None:
        await ws.send(orjson.dumps({"type": "session.created", "session": {"type": "realtime"}}).decode())
        n = 0
        async for raw in ws:
            ev = json.loads(raw, object_pairs_hook=self._first_wins)
            if ev.get("type") == "session.update":
                await ws.send(orjson.dumps({"type": "session.updated", "session": ev.get("session")}).decode())
            elif ev.get("type") == "response.create":
                self.creates.append(ev)
                n += 1
                rid = f"resp_{n}"
                limit = (ev.get("response") or {}).get("max_output_tokens")
                out = limit if isinstance(limit, int) else 1000
                await ws.send(orjson.dumps({"type": "response.created", "response": {"id": rid}}).decode())
                await ws.send(
                    orjson.dumps(
                        {
                            "type": "response.done",
                            "response": {
                                "id": rid,
                                "status": "completed",
                                "usage": {"input_tokens": 0, "output_tokens": out},
                            },
                        }
                    ).decode()
                )


@pytest.fixture
def first_wins_gateway(template_home: Path, tmp_path: Path) -> Iterator[tuple[RunningServer, FirstWinsUpstream]]:
    up = FirstWinsUpstream()
    home = tmp_path / "home"
    shutil.copytree(template_home, home)
    init = json.loads((home / "init.json").read_text())
    text = (
        f'[[upstreams]]\nname = "firstwins"\nbase_url = "http://127.0.0.1:{up.port}/v1"\n'
        f'api_key_env = "{UPSTREAM_KEY_ENV}"\nmodels = ["gpt-*"]\n\n' + PRICED
    )
    srv = start_server(make_settings(home, "", config_text=text), init)
    try:
        yield srv, up
    finally:
        srv.stop()


def test_wk49_a_duplicated_type_key_cannot_start_an_unpinned_response(first_wins_gateway):
    """Before: keyplane read the LAST `type` (conversation.item.create) and forwarded the client's bytes; an
    upstream reading the FIRST saw a response.create keyplane never pinned, and wrote 1000 output tokens
    against a reservation of 5 (a hard limit passed by 200x). Now the frame forwarded is keyplane's own
    serialization of what it checked."""
    srv, up = first_wins_gateway
    settled = record_settled(srv)
    smuggled = (
        '{"type":"response.create","response":{"max_output_tokens":"inf"},'
        '"type":"conversation.item.create","item":{"type":"message","role":"user","content":[]}}'
    )

    async def go() -> None:
        async with websockets.connect(_url(srv), additional_headers=_hdr(srv.api_key)) as ws:
            await _until(ws, ("session.created",))
            await ws.send(smuggled)
            await ws.send(orjson.dumps({"type": "response.create"}).decode())  # a proper one, to sync on
            await _until(ws, ("response.done",))
            # A window for a late create at the upstream: the assertion is that none arrives unpinned.
            await asyncio.sleep(0.3)

    asyncio.run(go())
    # Every response.create the upstream acted on carries the pinned output limit.
    assert up.creates and all((c.get("response") or {}).get("max_output_tokens") == 5 for c in up.creates)
    wait_for(lambda: len(settled) >= 1)
    assert all(ctx.completion_tokens <= 5 for ctx in settled)


# --- fields of the beta API, transcription sessions, frames that are not events -----------------------------


def test_wk49_beta_output_limit_and_transcription_spellings_are_refused_not_forwarded(make_gateway, fake_rt):
    """Before: `response.max_response_output_tokens`, `session.max_response_output_tokens`,
    `session.input_audio_transcription`, `session.type: transcription` and `transcription_session.update`
    reached the upstream untouched (output unbounded by the reservation, unmetered transcription)."""
    srv = make_gateway()
    bad = [
        {"type": "response.create", "event_id": "e1", "response": {"max_response_output_tokens": "inf"}},
        {"type": "response.create", "event_id": "e2", "response": {"model": "gpt-4o-realtime-preview"}},
        {"type": "session.update", "event_id": "e3", "session": {"max_response_output_tokens": "inf"}},
        {"type": "session.update", "event_id": "e4", "session": {"input_audio_transcription": {"model": "whisper-1"}}},
        {"type": "session.update", "event_id": "e5", "session": {"type": "transcription"}},
        {"type": "transcription_session.update", "event_id": "e6", "session": {}},
    ]

    async def go() -> list[dict[str, Any]]:
        errs = []
        async with websockets.connect(_url(srv, "gpt-realtime"), additional_headers=_hdr(srv.api_key)) as ws:
            await _until(ws, ("session.created",))
            for ev in bad:
                await ws.send(orjson.dumps(ev).decode())
                errs.append(await _until(ws, ("error",)))
        return errs

    errs = asyncio.run(go())
    assert [e["error"].get("event_id") for e in errs] == ["e1", "e2", "e3", "e4", "e5", "e6"]
    seen = [e for e in fake_rt.events if e.get("event_id") in {"e1", "e2", "e3", "e4", "e5", "e6"}]
    assert seen == []


def test_wk49_frames_that_are_not_json_events_are_not_forwarded(make_gateway, fake_rt):
    srv = make_gateway()

    async def go() -> int:
        n = 0
        async with websockets.connect(_url(srv, "gpt-realtime"), additional_headers=_hdr(srv.api_key)) as ws:
            await _until(ws, ("session.created",))
            for frame in ('["response.create"]', "not json", b'{"type":"response.create"', '{"type": 1}'):
                await ws.send(frame)
                await _until(ws, ("error",))
                n += 1
        return n

    assert asyncio.run(go()) == 4
    assert fake_rt.of_type("response.create") == []


# --- concurrency: responses in flight ------------------------------------------------------------------------


def test_wk49_responses_in_flight_per_session_are_bounded(make_gateway, fake_rt):
    """Before: a session could hold any number of admitted, never-finished responses (each a reservation and
    an upstream generation); now at most MAX_IN_FLIGHT, the rest refused with an error event."""
    from keyplane.proxy.realtime_session import MAX_IN_FLIGHT

    fake_rt.hold = True
    srv = make_gateway()

    async def go() -> int:
        errors = 0
        async with websockets.connect(_url(srv, "gpt-realtime"), additional_headers=_hdr(srv.api_key)) as ws:
            await _until(ws, ("session.created",))
            for i in range(MAX_IN_FLIGHT + 4):
                await ws.send(orjson.dumps({"type": "response.create", "event_id": f"c{i}"}).decode())
            while errors < 4:  # the refusals of the creates past the bound (each recv times out loudly)
                errors += json.loads(await asyncio.wait_for(ws.recv(), 10)).get("type") == "error"
            while True:  # and nothing more: the session stays quiet
                try:
                    ev = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                except TimeoutError:
                    break
                errors += ev.get("type") == "error"
        return errors

    assert asyncio.run(go()) == 4
    wait_for(lambda: len(fake_rt.of_type("response.create")) >= MAX_IN_FLIGHT)  # the admitted ones reach it
    assert len(fake_rt.of_type("response.create")) == MAX_IN_FLIGHT
    fake_rt.release()


# --- a session lives no longer than its key's permissions ------------------------------------------------------


def test_wk49_a_session_ends_when_its_key_loses_the_model_scope(make_gateway, fake_rt):
    """Before: a key made read-only (or restricted away from api.model.request) kept its open realtime session,
    and every response.create in it was still admitted and forwarded."""
    srv = make_gateway()
    key = admin(srv, "POST", f"/projects/{srv.project_id}/api_keys", {"name": "voice"})

    async def go() -> tuple[dict[str, Any], int | None]:
        async with websockets.connect(_url(srv, "gpt-realtime"), additional_headers=_hdr(key["value"])) as ws:
            await _until(ws, ("session.created",))
            await ws.send(orjson.dumps({"type": "response.create"}).decode())
            await _until(ws, ("response.done",))
            await asyncio.to_thread(
                admin, srv, "POST", f"/projects/{srv.project_id}/api_keys/{key['id']}", {"permissions": "read_only"}
            )
            snapshot = srv.app.runtime.snapshot
            # The change reaches the snapshot (the session checks it at the next response.create).
            await asyncio.to_thread(
                wait_for, lambda: not snapshot.keys_by_id[key["id"]].permissions.allows("api.model.request"), 10
            )
            try:
                await ws.send(orjson.dumps({"type": "response.create"}).decode())
                ev = await _until(ws, ("error", "response.done"))
            except websockets.exceptions.ConnectionClosed:
                return {"type": "closed"}, ws.close_code
            with_close: int | None = None
            try:
                await asyncio.wait_for(ws.recv(), 3)
            except websockets.exceptions.ConnectionClosed:
                with_close = ws.close_code
            except TimeoutError:
                pass
            return ev, with_close

    ev, code = asyncio.run(go())
    assert code == 1008, ev
    assert len(fake_rt.of_type("response.create")) == 1


# --- an instance that cannot confirm its keys admits no response ------------------------------------------------


@pytest.mark.postgres
def test_wk49_a_stale_instance_admits_no_realtime_response(tmp_path, fake_rt):
    """Before: staleness was checked when a session opened, never again; an instance cut off from its store
    (so possibly blind to a revocation) went on admitting responses in sessions already open, while it
    refused every /v1 request (503 authority_stale)."""
    from urllib.parse import urlsplit

    from tests.faults import FaultProxy
    from tests.support import init_org, postgres_database

    with postgres_database() as url:
        pg = urlsplit(url)
        proxy = FaultProxy(pg.port or 5432, pg.hostname or "127.0.0.1")
        text = (
            f'[[upstreams]]\nname = "fake"\nbase_url = "{fake_rt.base_url}"\napi_key_env = "{UPSTREAM_KEY_ENV}"\n'
            'models = ["gpt-*"]\n\n' + PRICED
        )
        settings = make_settings(
            tmp_path / "home",
            url.replace(f"{pg.hostname}:{pg.port}", f"127.0.0.1:{proxy.port}"),
            config_text=text,
            KEYPLANE_MAX_STALENESS_SECONDS="2",
        )
        srv = start_server(settings, init_org(settings))
        try:

            async def go() -> dict[str, Any]:
                async with websockets.connect(_url(srv, "gpt-realtime"), additional_headers=_hdr(srv.api_key)) as ws:
                    await _until(ws, ("session.created",))
                    await ws.send(orjson.dumps({"type": "response.create"}).decode())
                    await _until(ws, ("response.done",))
                    proxy.blackhole()
                    # Real time passes (the snapshot's staleness reads the monotonic clock): until past the bound.
                    snap, bound = srv.app.runtime.snapshot, srv.app.runtime.settings.max_staleness_seconds
                    await asyncio.to_thread(wait_for, lambda: not snap.is_fresh(bound), 10)
                    await ws.send(orjson.dumps({"type": "response.create", "event_id": "late"}).decode())
                    return await _until(ws, ("error", "response.done"))

            ev = asyncio.run(go())
            assert ev["type"] == "error" and ev["error"]["code"] == "authority_stale", ev
            assert len(fake_rt.of_type("response.create")) == 1
        finally:
            proxy.restore()
            srv.stop()
            proxy.close()


def test_wk49_a_session_ends_when_its_model_is_no_longer_permitted(make_gateway, fake_rt):
    """Before: model permissions were checked when the session opened; a deny list added afterwards left the
    session admitting responses of the model it now denies."""
    srv = make_gateway()

    async def go() -> tuple[list[str], int | None]:
        seen: list[str] = []
        async with websockets.connect(_url(srv, "gpt-realtime"), additional_headers=_hdr(srv.api_key)) as ws:
            await _until(ws, ("session.created",))
            await ws.send(orjson.dumps({"type": "response.create"}).decode())
            seen.append((await _until(ws, ("response.done", "error")))["type"])
            assert not _model_refused(srv, "gpt-realtime")
            await asyncio.to_thread(
                admin,
                srv,
                "POST",
                f"/projects/{srv.project_id}/model_permissions",
                {"mode": "deny_list", "model_ids": ["gpt-realtime"]},
            )
            # The deny list reaches this instance's access state (the session checks it at the next create).
            await asyncio.to_thread(wait_for, lambda: _model_refused(srv, "gpt-realtime"), 10)
            try:
                await ws.send(orjson.dumps({"type": "response.create"}).decode())
                seen.append((await _until(ws, ("response.done", "error")))["type"])
                await asyncio.wait_for(ws.recv(), 3)
            except (websockets.exceptions.ConnectionClosed, TimeoutError):
                pass
            return seen, ws.close_code

    seen, code = asyncio.run(go())
    assert seen[0] == "response.done" and code == 1008, (seen, code)
    assert len(fake_rt.of_type("response.create")) == 1


def test_wk49_a_response_never_done_ends_its_session_before_its_reservation_lapses(make_gateway, fake_rt):
    """Before: an upstream that never sent response.done kept the response admitted for as long as the session
    lived; the limiter drops a reservation never settled after reservation_ttl_seconds, so its budget went to
    other requests while the response could still be billed at the end: past the hard limit."""
    fake_rt.hold = True
    srv = make_gateway(KEYPLANE_RESERVATION_TTL_SECONDS="3")
    settled = record_settled(srv)

    async def go() -> tuple[int | None, float]:
        async with websockets.connect(_url(srv, "gpt-realtime"), additional_headers=_hdr(srv.api_key)) as ws:
            await _until(ws, ("session.created",))
            await ws.send(orjson.dumps({"type": "response.create"}).decode())
            await _until(ws, ("response.created",))
            t0 = asyncio.get_running_loop().time()
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except (websockets.exceptions.ConnectionClosed, TimeoutError):
                pass
            return ws.close_code, asyncio.get_running_loop().time() - t0

    code, took = asyncio.run(go())
    assert code == 1008 and took < 3.0, (code, took)  # 0.8 x the reservation's 3 s, and the watch's 0.5 s
    wait_for(lambda: len(settled) == 1, 10)
    assert settled[0].usage_estimated and settled[0].completion_tokens > 0  # billed at what it reserved
    fake_rt.release()
