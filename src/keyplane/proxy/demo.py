"""The built-in offline upstream ``demo`` (base_url = "demo"): try keyplane with no provider key.

Model ``demo-echo`` (any ``demo-*`` name works) answers deterministically: it repeats the last user
text. Usage numbers are real token counts (o200k_base), so limits and metering behave as with a
provider. Chat completions, completions, embeddings and responses, streaming too, in OpenAI's shapes;
``n`` choices, ``logprobs``, a tool call when ``tools`` are given (and ``tool_choice`` allows one), and
``encoding_format="base64"`` embeddings.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from keyplane import errors
from keyplane.proxy import estimate

MODELS = ("demo-echo",)
_JSON = b"application/json"


def loads(body: bytes) -> Any:
    return orjson.loads(body)


class DemoResponse:
    __slots__ = ("_events", "_payload", "content_type", "headers", "status")

    def __init__(self, status: int, payload: bytes = b"", events: list[bytes] | None = None) -> None:
        self.status = status
        self._payload = payload
        self._events = events
        self.content_type = "text/event-stream" if events is not None else "application/json"
        # No x-request-id: the gateway's own (unique per request) is used.
        self.headers = [(b"content-type", self.content_type.encode())]

    async def read(self) -> bytes:
        return self._payload if self._events is None else b"".join(self._events)

    async def chunks(self) -> AsyncIterator[bytes]:
        for ev in self._events if self._events is not None else [self._payload]:
            yield ev

    def close(self) -> None:
        pass


def _error(status: int, message: str, code: str | None = None, param: str | None = None) -> DemoResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return DemoResponse(status, orjson.dumps(body))


def _last_user_text(req: dict[str, Any]) -> str:
    if "messages" in req:
        for m in reversed(req.get("messages") or []):
            if isinstance(m, dict) and m.get("role") == "user":
                return estimate.flatten(m.get("content"))
        return ""
    for k in ("input", "prompt"):
        if k in req:
            v = req[k]
            if isinstance(v, list) and v and isinstance(v[-1], dict):
                return estimate.flatten(v[-1].get("content"))
            return estimate.flatten(v)
    return ""


def _reply(req: dict[str, Any]) -> str:
    said = _last_user_text(req).strip()
    return f"You said: {said}" if said else "Hello from keyplane's demo upstream."


def _pieces(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + [parts[-1]]


def _chat_usage(p: int, c: int) -> dict[str, Any]:
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _sse(obj: dict[str, Any], event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def answer(method: str, path_qs: str, body: bytes) -> DemoResponse:
    path = path_qs.split("?", 1)[0]
    if method == "GET" and path == "/v1/models":
        return DemoResponse(200, orjson.dumps({"object": "list", "data": [model(m) for m in MODELS]}))
    if method == "GET" and path.startswith("/v1/models/"):
        return DemoResponse(200, orjson.dumps(model(path.rsplit("/", 1)[1])))
    if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"):
        return _error(
            404,
            f"Invalid URL ({method} {path}): the demo upstream serves only chat completions, "
            "completions, embeddings, responses and models.",
            code="unknown_url",
        )
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _error(400, "We could not parse the JSON body of your request.")
    if not isinstance(req, dict):
        return _error(400, "The request body must be a JSON object.")
    name = str(req.get("model") or "demo-echo")
    created = int(time.time())
    rid = hashlib.sha256(body).hexdigest()[:24]
    if path == "/v1/embeddings":
        return _embeddings(req, name)
    prompt = estimate.count(estimate.prompt_text(req))
    text = _reply(req)
    pieces = _pieces(text)
    out_tokens = estimate.count(text)
    stream = bool(req.get("stream"))
    if path == "/v1/responses":
        return _responses(req, name, rid, created, text, pieces, prompt, out_tokens, stream)
    chat = path == "/v1/chat/completions"
    obj = "chat.completion" if chat else "text_completion"
    n = req.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N or n * len(text) > MAX_OUTPUT:
        return _error(
            400,
            f"`n` must be an integer between 1 and {MAX_N} (and the demo's answers at most "
            f"{MAX_OUTPUT} characters in all).",
            code="invalid_value",
            param="n",
        )
    call = _tool_call(req, rid) if chat else None
    if call is not None:
        out_tokens = estimate.count(call["function"]["name"] + call["function"]["arguments"])
    lp = _logprobs(req, pieces, chat) if call is None else None
    if not stream:
        choices = []
        for i in range(n):
            choice: dict[str, Any] = {"index": i, "logprobs": lp, "finish_reason": "tool_calls" if call else "stop"}
            if call is not None:
                choice["message"] = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
            elif chat:
                choice["message"] = {"role": "assistant", "content": text, "refusal": None}
            else:
                choice["text"] = text
            choices.append(choice)
        return DemoResponse(
            200,
            orjson.dumps(
                {
                    "id": f"{'chatcmpl' if chat else 'cmpl'}-demo{rid}",
                    "object": obj,
                    "created": created,
                    "model": name,
                    "system_fingerprint": "fp_demo",
                    "choices": choices,
                    "usage": _chat_usage(prompt, out_tokens * n),
                }
            ),
        )
    include = bool((req.get("stream_options") or {}).get("include_usage"))
    base = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-demo{rid}",
        "object": f"{obj}.chunk" if chat else obj,
        "created": created,
        "model": name,
        "system_fingerprint": "fp_demo",
    }
    events = []
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}] if chat else []
    if call is not None:
        deltas = [{"role": "assistant", "content": None, "tool_calls": [{"index": 0, **call}]}]
    else:
        deltas += [{"content": p} if chat else {"text": p} for p in pieces]
    finish = "tool_calls" if call else "stop"
    for c in range(n):
        for i, d in enumerate(deltas):
            last = i == len(deltas) - 1
            ch = {"index": c, "delta": d, "logprobs": None, "finish_reason": finish if last else None}
            if not chat:
                ch = {"index": c, "text": d["text"], "logprobs": None, "finish_reason": finish if last else None}
            events.append(_sse({**base, "choices": [ch], **({"usage": None} if include else {})}))
    if include:
        events.append(_sse({**base, "choices": [], "usage": _chat_usage(prompt, out_tokens * n)}))
    events.append(b"data: [DONE]\n\n")
    return DemoResponse(200, events=events)


MAX_N = 128  # OpenAI's bound on `n`
MAX_OUTPUT = 4 * 1024 * 1024  # characters of answer text per request, all choices together (bounded work)


def _tool_call(req: dict[str, Any], rid: str) -> dict[str, Any] | None:
    """A call of the tool ``tool_choice`` names (or, with "auto"/"required"/unset, the first function tool);
    None when there are no tools, tool_choice is "none", or the last message is already a tool's result."""
    tools = [t for t in req.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    choice = req.get("tool_choice", "auto")
    msgs = req.get("messages") or []
    if not tools or choice == "none" or (msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "tool"):
        return None
    fn: dict[str, Any] = tools[0]["function"]
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        fn = next((t["function"] for t in tools if t["function"].get("name") == wanted), fn)
    p = fn.get("parameters")
    params: dict[str, Any] = p if isinstance(p, dict) else {}
    p = params.get("properties")
    props: dict[str, Any] = p if isinstance(p, dict) else {}
    required = params.get("required")
    names = [k for k in required if isinstance(k, str)] if isinstance(required, list) else list(props)[:1]
    said = _last_user_text(req).strip()
    placeholder: dict[str, Any] = {
        "string": said,
        "number": 0,
        "integer": 0,
        "boolean": False,
        "array": [],
        "object": {},
    }
    args: dict[str, Any] = {}
    for k in names[:64]:
        spec = props.get(k)
        kind = spec.get("type") if isinstance(spec, dict) else "string"
        args[k] = placeholder.get(kind, said) if isinstance(kind, str) else said
    return {
        "id": f"call_demo{rid[:16]}",
        "type": "function",
        "function": {"name": str(fn.get("name") or "tool"), "arguments": orjson.dumps(args).decode()},
    }


def _logprobs(req: dict[str, Any], pieces: list[str], chat: bool) -> dict[str, Any] | None:
    """OpenAI's logprobs structure for the echoed pieces: the demo is certain of each, so logprob 0."""
    if chat:
        if req.get("logprobs") is not True:
            return None
        top = req.get("top_logprobs")
        k = top if isinstance(top, int) and not isinstance(top, bool) and 0 <= top <= 20 else 0
        content = []
        for p in pieces:
            entry = {"token": p, "logprob": 0.0, "bytes": list(p.encode())}
            content.append({**entry, "top_logprobs": [entry][:k]})
        return {"content": content, "refusal": None}
    want = req.get("logprobs")
    if not isinstance(want, int) or isinstance(want, bool) or want < 0:
        return None
    offsets, at = [], 0
    for p in pieces:
        offsets.append(at)
        at += len(p)
    return {
        "tokens": pieces,
        "token_logprobs": [0.0] * len(pieces),
        "top_logprobs": [{p: 0.0} if want else {} for p in pieces],
        "text_offset": offsets,
    }


MAX_DIMENSIONS = 3072  # text-embedding-3-large's size, the largest OpenAI serves
MAX_INPUTS = 2048  # OpenAI's limit on inputs per embeddings request


def _embeddings(req: dict[str, Any], name: str) -> DemoResponse:
    inp = req.get("input", "")
    items = inp if isinstance(inp, list) else [inp]
    asked = req.get("dimensions")
    dims: int = asked if isinstance(asked, int) else 16
    if not 1 <= dims <= MAX_DIMENSIONS or len(items) > MAX_INPUTS:  # bounded work per request (issue #12)
        return DemoResponse(
            400,
            errors.invalid_value(
                "dimensions" if len(items) <= MAX_INPUTS else "input",
                f"`dimensions` must be between 1 and {MAX_DIMENSIONS}, and `input` at most {MAX_INPUTS} items.",
            ).body(),
        )
    encoding = req.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        return _error(
            400, "`encoding_format` must be 'float' or 'base64'.", code="invalid_value", param="encoding_format"
        )
    data = []
    tokens = 0
    for i, x in enumerate(items):
        s = x if isinstance(x, str) else orjson.dumps(x).decode()
        tokens += len(x) if isinstance(x, list) else estimate.count(s)
        h = hashlib.sha256(s.encode()).digest() * (dims // 32 + 1)
        vec: list[float] | str = [round((b - 128) / 128, 6) for b in h[:dims]]
        if encoding == "base64":  # little-endian float32, as OpenAI sends it
            vec = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vec})
    return DemoResponse(
        200,
        orjson.dumps(
            {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        ),
    )


def _responses(
    req: dict[str, Any],
    name: str,
    rid: str,
    created: int,
    text: str,
    pieces: list[str],
    prompt: int,
    out_tokens: int,
    stream: bool,
) -> DemoResponse:
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": out_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + out_tokens,
    }
    msg = {
        "type": "message",
        "id": f"msg_demo{rid}",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    resp: dict[str, Any] = {
        "id": f"resp_demo{rid}",
        "object": "response",
        "created_at": created,
        "status": "completed",
        "model": name,
        "error": None,
        "incomplete_details": None,
        "instructions": req.get("instructions"),
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "output": [msg],
        "usage": usage,
    }
    if not stream:
        return DemoResponse(200, orjson.dumps(resp))
    pending = {**resp, "status": "in_progress", "output": [], "usage": None}
    n = iter(range(1_000_000))
    ev = [_sse({"type": "response.created", "response": pending, "sequence_number": next(n)}, "response.created")]
    item = {**msg, "status": "in_progress", "content": []}
    ev.append(
        _sse(
            {"type": "response.output_item.added", "output_index": 0, "item": item, "sequence_number": next(n)},
            "response.output_item.added",
        )
    )
    ids = {"item_id": msg["id"], "output_index": 0, "content_index": 0}
    ev.append(
        _sse(
            {
                "type": "response.content_part.added",
                **ids,
                "part": {"type": "output_text", "text": "", "annotations": []},
                "sequence_number": next(n),
            },
            "response.content_part.added",
        )
    )
    for p in pieces:
        ev.append(
            _sse(
                {"type": "response.output_text.delta", **ids, "delta": p, "logprobs": [], "sequence_number": next(n)},
                "response.output_text.delta",
            )
        )
    ev.append(
        _sse(
            {"type": "response.output_text.done", **ids, "text": text, "logprobs": [], "sequence_number": next(n)},
            "response.output_text.done",
        )
    )
    ev.append(
        _sse(
            {"type": "response.output_item.done", "output_index": 0, "item": msg, "sequence_number": next(n)},
            "response.output_item.done",
        )
    )
    ev.append(_sse({"type": "response.completed", "response": resp, "sequence_number": next(n)}, "response.completed"))
    return DemoResponse(200, events=ev)


def model(m: str) -> dict[str, Any]:
    return {"id": m, "object": "model", "created": 1_735_689_600, "owned_by": "keyplane-demo"}
