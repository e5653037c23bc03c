"""An OpenAI-compatible fake upstream with fault injection, for tests and the benchmark.

Raw asyncio + httptools, so it costs the benchmark far less CPU than the gateway it measures.
Serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses (streaming and not), images,
audio (speech, transcriptions, translations), /v1/moderations,
/v1/models[/{id}], files and batches (fake_objects.py: a batch's output file holds each request's answer
with its usage), fine-tuning jobs, evals and eval runs (fake_jobs.py), with real-looking usage.

Faults are set per instance (``fake.default``), queued per request (``fake.push(Behaviour(...))``,
consumed first-in first-out), or per request with ``x-fake-*`` headers (``x-fake-status: 503``,
``x-fake-latency-ms``, ``x-fake-retry-after``, ``x-fake-retry-after-ms``, ``x-fake-die-after`` (events),
``x-fake-garbage: 1``, ``x-fake-chunk-delay-ms``, ``x-fake-text``, ``x-fake-no-usage: 1``,
``x-fake-cached-tokens``, ``x-fake-close: 1``, ``x-fake-max-output`` (write as many tokens as allowed)).
Out of process, the same through the control
endpoints ``POST /_fake/push`` (a JSON list of behaviours), ``POST /_fake/default``, ``POST /_fake/reset``
and ``GET /_fake/requests``. Every request received is recorded (``fake.requests``).

    python -m keyplane.testing.fake_upstream --port 9000 [--fixed]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import itertools
import threading
from dataclasses import dataclass
from typing import Any

import orjson

from keyplane.testing import answers, answers_errors, answers_media
from keyplane.testing.fake_http import CT_JSON, Conn, HttpRequest, Recorded, head
from keyplane.testing.fake_objects import FakeObjects


@dataclass
class Behaviour:
    status: int = 200
    error_body: str | None = None  # the body of an error answer (else an OpenAI-shaped one)
    latency: float = 0.0  # seconds before the status line
    retry_after: str | None = None
    retry_after_ms: str | None = None
    die_after: int | None = None  # close the connection after this many SSE events (or half a JSON body)
    garbage: bool = False  # 200 with a non-JSON body
    chunk_delay: float = 0.0  # seconds between SSE events
    text: str = answers.DEFAULT_TEXT
    send_usage: bool = True  # honour stream_options.include_usage / report usage in response.completed
    cached_tokens: int = 0
    request_id: str | None = ""  # "" = a generated one; None = no x-request-id header
    close: bool = False  # close the connection without answering
    hang: bool = False  # never answer
    # Write as many output tokens as allowed: the request's max_completion_tokens / max_tokens /
    # max_output_tokens, capped at this (this many when the request sets none).
    max_output: int | None = None


class FakeUpstream:
    def __init__(self, *, fixed: bool = False, record: bool = True, max_records: int = 10_000) -> None:
        self.fixed = fixed  # answer every POST with one precomputed chat completion (benchmark)
        self.record = record
        self.default = Behaviour()
        self.queue: collections.deque[Behaviour] = collections.deque()
        self.requests: collections.deque[Recorded] = collections.deque(maxlen=max_records)
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._ids = itertools.count(1)
        self.objects = FakeObjects()  # files, batches, stored responses (fake_objects.py)
        self.connections = 0  # TCP connections accepted so far
        self._fixed_response = self._fixed()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- control -----------------------------------------------------------------------------

    def push(self, *behaviours: Behaviour) -> None:
        self.queue.extend(behaviours)

    def reset(self) -> None:
        self.queue.clear()
        self.requests.clear()
        self.default = Behaviour()
        self.objects.batch_status = "completed"
        self.objects.store_bytes = 0
        vars(self.objects).pop("answer", None)  # a test's wrapper of the object endpoints ends with the test

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def model_requests(self) -> list[Recorded]:
        return [r for r in self.requests if not r.path.startswith("/_fake")]

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Conn(self), host, port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def start_in_thread(self) -> FakeUpstream:
        """Run on an event loop of its own in a daemon thread (for synchronous tests)."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="fake-upstream")
        self._thread.start()
        ready.wait(10)
        return self

    def stop_thread(self) -> None:
        if self._loop is not None:
            fut = asyncio.run_coroutine_threadsafe(self.stop(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    # --- answering ---------------------------------------------------------------------------

    def _fixed(self) -> bytes:
        body = orjson.dumps(
            answers.chat({"model": "gpt-4o-mini", "messages": [{"content": "hi"}]}, answers.DEFAULT_TEXT, 0, "fixed")
        )
        return head(200, CT_JSON, len(body), [(b"x-request-id", b"req_fixed")]) + body

    def behaviour_for(self, headers: dict[str, str]) -> Behaviour:
        b = self.queue.popleft() if self.queue else self.default
        if not any(k.startswith("x-fake-") for k in headers):
            return b
        h = headers
        b = dataclasses.replace(b)
        if "x-fake-status" in h:
            b.status = int(h["x-fake-status"])
        if "x-fake-latency-ms" in h:
            b.latency = float(h["x-fake-latency-ms"]) / 1000
        b.retry_after = h.get("x-fake-retry-after", b.retry_after)
        b.retry_after_ms = h.get("x-fake-retry-after-ms", b.retry_after_ms)
        if "x-fake-die-after" in h:
            b.die_after = int(h["x-fake-die-after"])
        b.garbage = b.garbage or h.get("x-fake-garbage") == "1"
        if "x-fake-chunk-delay-ms" in h:
            b.chunk_delay = float(h["x-fake-chunk-delay-ms"]) / 1000
        b.text = h.get("x-fake-text", b.text)
        b.send_usage = b.send_usage and h.get("x-fake-no-usage") != "1"
        if "x-fake-cached-tokens" in h:
            b.cached_tokens = int(h["x-fake-cached-tokens"])
        b.close = b.close or h.get("x-fake-close") == "1"
        if "x-fake-max-output" in h:
            b.max_output = int(h["x-fake-max-output"])
        return b

    async def answer(self, conn: Conn, req: HttpRequest, rec: Recorded | None) -> None:
        path = req.url.split(b"?", 1)[0].decode()
        if path.startswith("/_fake/"):
            conn.write_json(200, self._control(req.method, path, bytes(req.body)))
            return
        b = self.behaviour_for(req.headers)
        if b.hang:
            await asyncio.sleep(3600)
        if b.latency:
            await asyncio.sleep(b.latency)
        if b.close:
            conn.transport.close()
            return
        rid = f"req_fake{next(self._ids)}" if b.request_id == "" else b.request_id
        extra = [(b"x-request-id", rid.encode())] if rid else []
        if b.status >= 400:
            if b.retry_after is not None:
                extra.append((b"retry-after", b.retry_after.encode()))
            if b.retry_after_ms is not None:
                extra.append((b"retry-after-ms", b.retry_after_ms.encode()))
            body = b.error_body.encode() if b.error_body is not None else answers_errors.error_body(b.status)
            conn.write(head(b.status, CT_JSON, len(body), extra) + body)
            return
        if b.garbage:
            body = b"<html><body><h1>502 Bad Gateway</h1>not json at all</body></html>"
            conn.write(head(200, b"text/html", len(body), extra) + body)
            return
        obj = self.objects.answer(req.method, path, bytes(req.body))  # files, batches, stored responses
        if obj is not None and isinstance(obj[1], bytes):  # a file's content (a batch's JSONL output)
            conn.write(head(obj[0], b"application/octet-stream", len(obj[1]), extra) + obj[1])
            if rec is not None:
                rec.finished = True
            return
        if obj is not None:
            conn.write_json(*obj)
            if rec is not None:
                rec.finished = True
            return
        try:
            multipart = req.headers.get("content-type", "").startswith("multipart/")
            data = orjson.loads(req.body) if req.body and not multipart else {}
        except orjson.JSONDecodeError:
            conn.write_json(
                400,
                {
                    "error": {
                        "message": "We could not parse the JSON body of your request.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
            return
        if b.max_output is not None and isinstance(data, dict):
            asked = [
                v
                for f in ("max_completion_tokens", "max_tokens", "max_output_tokens")
                if isinstance(v := data.get(f), int) and v > 0
            ]
            b = dataclasses.replace(b, text=" ".join(["tok"] * min([b.max_output, *asked])))
        if req.method == "POST" and path.startswith(("/v1/images/", "/v1/audio/", "/v1/moderations")):
            result = answers_media.media(path, data if isinstance(data, dict) else {}, bytes(req.body), multipart)
        else:
            result = self._route(req.method, path, data, b, rid or "x")
        if result is None:
            body = answers_errors.error_body(404, f"Invalid URL ({req.method} {path})")
            conn.write(head(404, CT_JSON, len(body), extra) + body)
        elif isinstance(result, bytes):  # speech: audio
            conn.write(head(200, b"audio/mpeg", len(result), extra) + result)
        elif isinstance(result, str):  # a transcription as plain text
            text = result.encode()
            conn.write(head(200, b"text/plain; charset=utf-8", len(text), extra) + text)
        elif isinstance(result, list):
            if not await conn.write_stream(result, extra, b):
                return
        else:
            body = orjson.dumps(result)
            if b.die_after is not None:  # a body cut short: promised length, half sent
                conn.write(head(200, CT_JSON, len(body), extra) + body[: len(body) // 2])
                conn.transport.close()
                return
            conn.write(head(200, CT_JSON, len(body), extra) + body)
        if rec is not None:
            rec.finished = True

    def _route(self, method: str, path: str, data: dict[str, Any], b: Behaviour, rid: str) -> Any:
        stream = bool(data.get("stream"))
        if method == "POST" and path == "/v1/chat/completions":
            if stream:
                return answers.chat_stream_events(data, b.text, b.cached_tokens, rid, b.send_usage)
            return answers.chat(data, b.text, b.cached_tokens, rid)
        if method == "POST" and path == "/v1/completions":
            if stream:
                return answers.completion_stream_events(data, b.text, b.cached_tokens, rid, b.send_usage)
            return answers.completion(data, b.text, b.cached_tokens, rid)
        if method == "POST" and path == "/v1/embeddings":
            return answers.embeddings(data)
        if method == "POST" and path == "/v1/responses":
            if stream:
                return answers.responses_stream_events(data, b.text, b.cached_tokens, rid, b.send_usage)
            return answers_media.with_tool_calls(
                answers.response_object(data, b.text, b.cached_tokens, rid, with_usage=b.send_usage), data
            )
        if method == "POST" and path.startswith("/v1/batches"):  # billed elsewhere
            return {"created": 0, "data": [{"url": "https://fake.invalid/1.png"}], "text": "fake", "id": "batch_fake"}
        if method == "GET" and path == "/v1/models":
            return answers.models_list()
        if method == "GET" and path.startswith("/v1/models/"):
            m = path[len("/v1/models/") :]
            return answers.model_object(m) if m in answers.MODELS else None
        if method == "GET" and path.startswith("/v1/responses/"):  # a stored response, streamed (pass-through SSE)
            return answers.responses_stream_events({"model": "gpt-4o-mini"}, b.text, 0, rid, b.send_usage)
        return None

    def _control(self, method: str, path: str, body: bytes) -> Any:
        if path == "/_fake/push":
            self.push(*(Behaviour(**x) for x in orjson.loads(body)))
        elif path == "/_fake/default":
            self.default = Behaviour(**orjson.loads(body))
        elif path == "/_fake/reset":
            self.reset()
        elif path == "/_fake/requests":
            return [
                {
                    "method": r.method,
                    "path": r.path,
                    "headers": r.headers,
                    "body": r.body.decode("utf-8", "replace"),
                    "finished": r.finished,
                    "disconnected": r.disconnected,
                }
                for r in self.model_requests()
            ]
        return {"ok": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--fixed", action="store_true", help="answer every POST with one precomputed completion")
    ap.add_argument("--no-record", action="store_true", help="do not keep the requests received")
    args = ap.parse_args()
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None

    async def run() -> None:
        fake = FakeUpstream(fixed=args.fixed, record=not args.no_record)
        port = await fake.start(args.host, args.port)
        print(f"fake upstream listening on http://{args.host}:{port}/v1", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(run())


if __name__ == "__main__":
    main()
