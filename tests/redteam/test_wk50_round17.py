"""Week 50 red-team review, round 17: a holder of a valid project key (or a narrowed one) against what landed on
2026-12-07: large audio uploads spooled and measured before admission under money controls
(billing/admission_audio.py, proxy/uploads.py spool_measured, billing/audio_length.py, billing/audio_flac.py), key
rotation lineage (one spend counter and rate-limit bucket per line: control/keys.rotate_key, billing/engine.py,
usage Record.key_lineage, billing/ledger.budget_keys), intake's second look at the key once the body is read
(proxy/intake.py _still) and what waits after it, the token estimator after round 15, the Realtime API and its
client secrets, and batch / file / vector-store ownership. Each test states the secure behaviour and failed on the
code as this round found it; each passes with its fix: 1 (a large transcription spooled by admission after
intake's second look: a key revoked or narrowed meanwhile reached the upstream; proxy/handler.py looks at the key
again once admitted, Intake.again), 2 (strings the estimator skipped as "ids and enums": a role of 128 characters
is rendered and billed by a local server's chat template; limits/tokens.py counts every string) and 3 (fields of an
OpenAI-compatible server's own, vLLM's `documents` and `chat_template`, not counted at all: limits/tokens.py
Counter.rest), and 4, found in this round's review and fixed after it (a retry that fired before the authority
patrol's next look went upstream as a revoked key: proxy/forward.py asks before each retry) (tests/redteam/conftest.py:
a gateway on stand-in upstreams, in-process limiter)."""

from __future__ import annotations

import asyncio
import random
import string
import time

import orjson
from aiohttp import web

from tests.billing.conftest import UPSTREAM_KEY_ENV
from tests.billing.test_audio_length_gateway import wav
from tests.proxy.conftest import admin
from tests.redteam.conftest import serve_routes
from tests.redteam.test_wk49_round4 import _limit, _project, _spent
from tests.redteam.test_wk50_round10 import _post
from tests.redteam.test_wk50_round15 import _reserved_and_billed, _slow_post

MB = 1024 * 1024

# --- 1. a large transcription spooled (and measured) after intake's second look at the key --------------------------


def _whisper(fake) -> str:  # type: ignore[no-untyped-def]
    return (
        f'\n[[upstreams]]\nname = "fake2"\nbase_url = "{fake.base_url}"\n'
        'api_key_env = "KP_BILLING_TEST_UPSTREAM_KEY"\nmodels = ["whisper-*"]\n'
    )


def _transcriptions(fake) -> list:  # type: ignore[no-untyped-def]
    return [r for r in fake.model_requests() if r.path == "/v1/audio/transcriptions"]


def _slow_upload(srv, key: str, audio: bytes, between) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    """A whisper-1 transcription in the official Python SDK's field order (``model`` before the file), posted on a
    raw socket: the head and the first MiB and a half of the body, then ``between()`` (run in a thread), then the
    rest 1.5 s later; the answer's status and body (round 15's slow POST)."""
    body = (
        b'--kpb\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b'--kpb\r\nContent-Disposition: form-data; name="response_format"\r\n\r\ntext\r\n'
        b'--kpb\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + audio + b"\r\n--kpb--\r\n"
    )
    # authenticated, checked (intake's second look too) while the first part is read; the file is being spooled
    return _slow_post(
        srv, key, "/audio/transcriptions", body, between, "multipart/form-data; boundary=kpb", MB + MB // 2, 0.5
    )


def test_a_spooled_upload_whose_key_is_narrowed_meanwhile_is_held_to_the_key_as_it_is_now(make_gw, fake):
    """docs/proxy.md: "once the body is in (however slowly the client sent it) and checked, the key is looked at
    again before anything goes upstream: refused if it ended meanwhile, and held to the key as it is now if it
    changed". Round 15 put that second look at the end of proxy/intake.py (``_still``). But a large whisper-1
    transcription sent model-first under a spend limit is read whole only AFTER intake: admission spools it
    (billing/admission_audio.py -> Upload.spool_measured), for as long as the client likes, then admits and forwards
    it with the KeyEntry intake saw. The patrol (proxy/authority.py) only cuts keys that ENDED, never a narrowed one.
    Attack: the key is made read-only while its upload is half sent; the rest follows. Expected: 403 missing_scope,
    no upstream call (as for a slow JSON body since round 15)."""
    pid, _ = _project(srv := make_gw(_whisper(fake), KEYPLANE_MAX_BODY_BYTES=str(3 * MB)))
    _limit(srv, pid, 100)  # money controls: the upload is spooled and measured before admission
    k = admin(srv, "POST", f"/projects/{pid}/api_keys", {"name": "soon narrowed"})
    fake.requests.clear()
    status, answer = _slow_upload(
        srv,
        k["value"],
        wav(60, rate=16000, width=2),  # 1.9 MB
        lambda: admin(srv, "POST", f"/projects/{pid}/api_keys/{k['id']}", {"permissions": "read_only"}),
    )
    assert status == 403 and b"missing_scope" in answer, (status, answer[:300])
    assert _transcriptions(fake) == []


def test_a_spooled_upload_whose_key_is_revoked_meanwhile_never_reaches_the_upstream(make_gw, fake):
    """The same upload, the key revoked instead: the patrol would cut the call only once it is already on its way
    (its first look up to 0.5 s later; a spooled body goes upstream at once, so the provider has it whole and runs
    it). Expected: 401 and no upstream call; nothing billed."""
    pid, _ = _project(srv := make_gw(_whisper(fake), KEYPLANE_MAX_BODY_BYTES=str(3 * MB)))
    _limit(srv, pid, 100)
    k = admin(srv, "POST", f"/projects/{pid}/api_keys", {"name": "soon revoked"})
    fake.requests.clear()
    status, answer = _slow_upload(
        srv,
        k["value"],
        wav(60, rate=16000, width=2),
        lambda: admin(srv, "DELETE", f"/projects/{pid}/api_keys/{k['id']}"),
    )
    assert status == 401, (status, answer[:300])
    assert _transcriptions(fake) == []
    assert _spent(srv, pid) == (0, 0)  # what admission reserved is released, nothing spent


# --- 2. the strings of a chat body the estimator skips --------------------------------------------------------------


def _chatml_server() -> int:
    """A vLLM server whose model's chat template is ChatML (Qwen's): every message rendered as
    ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` whatever its role (vLLM takes any role string), then
    ``<|im_start|>assistant\\n``. It bills the prompt a byte-level tokenizer makes of that at most: each special
    token and line break one token, each byte of the role and content one."""

    async def chat(req: web.Request) -> web.StreamResponse:
        body = await req.json()
        prompt = 3 + sum(4 + len(m["role"].encode()) + len(m["content"].encode()) for m in body["messages"])
        await asyncio.sleep(1.5)
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        usage = {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1}
        return web.json_response(
            {"id": "chatcmpl-r17", "object": "chat.completion", "choices": [choice], "usage": usage}
        )

    return serve_routes({"/v1/chat/completions": chat})


def test_every_string_of_a_chat_body_is_reserved_even_a_role(make_gw):
    """docs/limits-and-billing.md: "Prompt tokens are an upper bound of what the body holds. Every string in the
    request is counted with the model's tokenizer, whatever field it sits in", and a model without a known tokenizer
    (a local model on vLLM, which DESIGN.md names) counts "one token per UTF-8 byte, the most any byte-level
    tokenizer makes". limits/tokens.py skips every string of at most 128 characters under the keys `type`, `id`,
    `call_id`, `role`, `status`, `detail`, `format` ("ids and enums"). A role is neither to vLLM: it takes any role
    string and its chat template renders it into the prompt it bills (ChatML: `<|im_start|>{role}`), as some
    templates render tool call ids. A key holder sends 2,000 messages of one character each under roles of 128
    characters: reserved ~10,000 tokens, billed ~266,000 (26x), so calls sent together pass a hard limit by that
    much each. Expected: what admission reserves (read while the call runs) covers what the call is billed."""
    rng = random.Random(17)
    messages = [{"role": "".join(rng.choices(string.ascii_letters, k=128)), "content": "x"} for _ in range(2_000)]
    port = _chatml_server()
    srv = make_gw(
        config_text=(
            f'[[upstreams]]\nname = "vllm"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
            f'api_key_env = "{UPSTREAM_KEY_ENV}"\nmodels = ["qwen-*"]\nmax_retries = 0\n\n'
            '[prices."qwen-local"]\ninput = 16\noutput = 16\ncontext_window = 1000000\nmax_output = 8\n'
        )
    )
    pid, key = _project(srv)
    body = {"model": "qwen-local", "messages": messages, "max_tokens": 5}
    billed_prompt = 3 + sum(4 + 128 + 1 for _ in messages)
    reserved, billed = _reserved_and_billed(srv, key, pid, body)
    assert billed >= billed_prompt * 16 // 1_000_000, billed  # the stand-in's usage was billed
    assert reserved >= billed, f"reserved {reserved} micro-dollars for a call billed {billed}"


def _rag_server() -> int:
    """A vLLM server whose model's chat template renders the request's `documents` (vLLM's own field of a chat
    request, for RAG templates: Command R, Granite) before the messages, and bills the prompt a byte-level tokenizer
    makes of that at most (each document's title and text one token a byte, 4 tokens of framing each)."""

    async def chat(req: web.Request) -> web.StreamResponse:
        body = await req.json()
        docs = sum(4 + len(d["title"].encode()) + len(d["text"].encode()) for d in body.get("documents") or [])
        prompt = 3 + docs + sum(4 + len(m["role"].encode()) + len(m["content"].encode()) for m in body["messages"])
        await asyncio.sleep(1.5)
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        usage = {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1}
        return web.json_response(
            {"id": "chatcmpl-r17d", "object": "chat.completion", "choices": [choice], "usage": usage}
        )

    return serve_routes({"/v1/chat/completions": chat})


def test_the_fields_an_openai_compatible_server_renders_are_reserved(make_gw):
    """The same promise for the fields of a request that OpenAI's API does not have but an OpenAI-compatible server
    renders into the prompt it bills: vLLM's chat request takes `documents` (rendered by RAG templates) and
    `chat_template_kwargs`. limits/tokens.py Counter.chat reads only `messages`, `tools`, `functions`,
    `response_format` and `prediction`: 300 KB of documents reserve nothing (reserved 25 tokens, billed ~298,000).
    And a `chat_template` sent with the request (vLLM takes one) renders whatever it likes from the messages:
    what it bills is not in the body at all. Expected: the documents reserved at their tokens (what admission
    reserves covers the bill), and a request template reserving the context window, as other input the body
    does not show."""
    from keyplane.limits import tokens

    port = _rag_server()
    srv = make_gw(
        config_text=(
            f'[[upstreams]]\nname = "vllm"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
            f'api_key_env = "{UPSTREAM_KEY_ENV}"\nmodels = ["command-*"]\nmax_retries = 0\n\n'
            '[prices."command-local"]\ninput = 16\noutput = 16\ncontext_window = 1000000\nmax_output = 8\n'
        )
    )
    pid, key = _project(srv)
    docs = [{"title": f"doc {i}", "text": "lorem ipsum dolor sit amet " * 100} for i in range(110)]
    body = {"model": "command-local", "messages": [{"role": "user", "content": "sum up"}], "documents": docs}
    reserved, billed = _reserved_and_billed(srv, key, pid, body)
    assert billed >= 300_000 * 16 // 1_000_000, billed  # the stand-in's usage was billed
    assert reserved >= billed, f"reserved {reserved} micro-dollars for a call billed {billed}"
    template = {"model": "command-local", "messages": [{"role": "user", "content": "x"}], "chat_template": "{{ x }}"}
    assert tokens.measure("/v1/chat/completions", "command-local", orjson.dumps(template)).unbounded


# --- 4. a retry after the key's revocation (left open by this round's review; fixed by the lead) --------------------


def test_a_request_whose_key_is_revoked_between_two_attempts_is_not_retried(make_gw):
    """A call the upstream fails (500, retryable) is sent again after a short backoff. The key is revoked while the
    first attempt runs: the retry fires sooner than the authority patrol's next look (every 0.5 s), so it went
    upstream as the revoked key. Expected: the retry is not sent (proxy/forward.py asks before each retry), and the
    client gets the revoked key's 401."""
    from tests.redteam.test_wk50_round13 import PRICED

    calls: list[float] = []
    revoke: list = []

    async def chat(req: web.Request) -> web.StreamResponse:
        await req.read()
        calls.append(time.monotonic())
        if len(calls) == 1:
            await asyncio.to_thread(revoke[0])  # revoked while the first attempt is at the provider
        return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)

    port = serve_routes({"/v1/chat/completions": chat})
    srv = make_gw(
        config_text=f'[[upstreams]]\nname = "openai"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
        f'api_key_env = "{UPSTREAM_KEY_ENV}"\nmodels = ["gpt-*"]\nmax_retries = 2\nretry_backoff = 0.05\n'
        "breaker_failures = 1000\n\n" + PRICED
    )
    pid, _ = _project(srv)
    k = admin(srv, "POST", f"/projects/{pid}/api_keys", {"name": "revoked mid-call"})
    revoke.append(lambda: admin(srv, "DELETE", f"/projects/{pid}/api_keys/{k['id']}"))
    r = _post(
        srv, k["value"], "/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 401, (r.status_code, r.text[:300])
    assert len(calls) == 1, f"{len(calls)} attempts went upstream, {len(calls) - 1} after the key was revoked"
