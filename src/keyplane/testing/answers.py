"""OpenAI-shaped answers of the fake upstream to the token endpoints (chat completions, completions,
embeddings, responses; whole and streamed, with real-looking usage numbers) and its model list, built from
the request body.

Shared by :mod:`keyplane.testing.fake_upstream`; kept apart so the server module is only about
HTTP and fault injection. Media answers and hosted tool calls are in answers_media.py, error bodies in
answers_errors.py.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from keyplane.testing import audio_chat

DEFAULT_TEXT = "Hello from the fake upstream."
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "fake-model")


def input_text(req: dict[str, Any]) -> str:
    """The text of the prompt, whatever the endpoint (messages, prompt, input)."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for k in ("content", "text", "input", "prompt", "instructions"):
                if k in v:
                    walk(v[k])

    for k in ("messages", "prompt", "input", "instructions"):
        if k in req:
            walk(req[k])
    return " ".join(out)


def count_tokens(text: str) -> int:
    """Real-looking: about four characters per token, at least one."""
    return max(1, (len(text) + 3) // 4)


def words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p if i == len(parts) - 1 else p + " " for i, p in enumerate(parts)]


def chat_usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def responses_usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def served_tier(req: dict[str, Any]) -> str:
    """The service tier the provider reports having served a request at: the one asked for when it offers it,
    else its project's default (``default`` here; tests patch the answers for a project defaulting to priority)."""
    tier = req.get("service_tier")
    return tier if tier in ("flex", "priority") else "default"


def chat(req: dict[str, Any], text: str, cached: int, rid: str) -> dict[str, Any]:
    p = count_tokens(input_text(req))
    obj = {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.get("model", "fake-model"),
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": chat_usage(p, len(words(text)), min(cached, p)),
        "service_tier": served_tier(req),
    }
    audio_chat.apply(req, obj["usage"], obj["choices"][0]["message"], rid)  # modalities: audio
    return obj


def completion(req: dict[str, Any], text: str, cached: int, rid: str) -> dict[str, Any]:
    p = count_tokens(input_text(req))
    return {
        "id": f"cmpl-{rid}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": req.get("model", "fake-model"),
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
        "usage": chat_usage(p, len(words(text)), min(cached, p)),
    }


def embedding_vector(s: str, dims: int = 8) -> list[float]:
    h = hashlib.sha256(s.encode()).digest()
    return [round((b - 128) / 128, 6) for b in h[:dims]]


def embeddings(req: dict[str, Any]) -> dict[str, Any]:
    inp = req.get("input", "")
    items = inp if isinstance(inp, list) else [inp]
    items = [x if isinstance(x, str) else str(x) for x in items]
    dims = req.get("dimensions") or 8
    p = sum(count_tokens(x) for x in items)
    return {
        "object": "list",
        "model": req.get("model", "fake-model"),
        "data": [
            {"object": "embedding", "index": i, "embedding": embedding_vector(x, dims)} for i, x in enumerate(items)
        ],
        "usage": {"prompt_tokens": p, "total_tokens": p},
    }


def response_object(
    req: dict[str, Any], text: str, cached: int, rid: str, status: str = "completed", with_usage: bool = True
) -> dict[str, Any]:
    p = count_tokens(input_text(req))
    done = status == "completed"
    return {
        "id": f"resp_{rid}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": req.get("model", "fake-model"),
        "error": None,
        "incomplete_details": None,
        "instructions": req.get("instructions"),
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "output": [
            {
                "type": "message",
                "id": f"msg_{rid}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
        if done
        else [],
        "usage": responses_usage(p, len(words(text)), min(cached, p)) if (done and with_usage) else None,
        "service_tier": served_tier(req),
    }


def chat_chunk(req: dict[str, Any], rid: str, delta: dict[str, Any], finish: str | None, usage_null: bool) -> bytes:
    c: dict[str, Any] = {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": req.get("model", "fake-model"),
        "service_tier": served_tier(req),
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage_null:
        c["usage"] = None
    return b"data: " + orjson.dumps(c) + b"\n\n"


def chat_stream_events(req: dict[str, Any], text: str, cached: int, rid: str, send_usage: bool) -> list[bytes]:
    include = bool((req.get("stream_options") or {}).get("include_usage")) and send_usage
    ws = words(text)
    ev = [chat_chunk(req, rid, {"role": "assistant", "content": "", "refusal": None}, None, include)]
    ev += [chat_chunk(req, rid, {"content": w}, None, include) for w in ws]
    ev.append(chat_chunk(req, rid, {}, "stop", include))
    if include:
        p = count_tokens(input_text(req))
        u = {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": req.get("model", "fake-model"),
            "service_tier": served_tier(req),
            "system_fingerprint": "fp_fake",
            "choices": [],
            "usage": chat_usage(p, len(ws), min(cached, p)),
        }
        audio_chat.apply(req, u["usage"], None, rid)
        ev.append(b"data: " + orjson.dumps(u) + b"\n\n")
    ev.append(b"data: [DONE]\n\n")
    return ev


def completion_stream_events(req: dict[str, Any], text: str, cached: int, rid: str, send_usage: bool) -> list[bytes]:
    include = bool((req.get("stream_options") or {}).get("include_usage")) and send_usage
    ws = words(text)
    ev = []
    for i, w in enumerate(ws):
        c: dict[str, Any] = {
            "id": f"cmpl-{rid}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": req.get("model", "fake-model"),
            "choices": [
                {"index": 0, "text": w, "logprobs": None, "finish_reason": "stop" if i == len(ws) - 1 else None}
            ],
        }
        if include:
            c["usage"] = None
        ev.append(b"data: " + orjson.dumps(c) + b"\n\n")
    if include:
        p = count_tokens(input_text(req))
        u = {
            "id": f"cmpl-{rid}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": req.get("model", "fake-model"),
            "choices": [],
            "usage": chat_usage(p, len(ws), min(cached, p)),
        }
        ev.append(b"data: " + orjson.dumps(u) + b"\n\n")
    ev.append(b"data: [DONE]\n\n")
    return ev


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


def responses_stream_events(req: dict[str, Any], text: str, cached: int, rid: str, send_usage: bool) -> list[bytes]:
    base = response_object(req, text, cached, rid, status="in_progress")
    seq = iter(range(10_000))
    ev = [
        _event("response.created", {"response": base, "sequence_number": next(seq)}),
        _event("response.in_progress", {"response": base, "sequence_number": next(seq)}),
    ]
    item = {"type": "message", "id": f"msg_{rid}", "status": "in_progress", "role": "assistant", "content": []}
    ev.append(_event("response.output_item.added", {"output_index": 0, "item": item, "sequence_number": next(seq)}))
    part = {"type": "output_text", "text": "", "annotations": []}
    ev.append(
        _event(
            "response.content_part.added",
            {"item_id": item["id"], "output_index": 0, "content_index": 0, "part": part, "sequence_number": next(seq)},
        )
    )
    for w in words(text):
        ev.append(
            _event(
                "response.output_text.delta",
                {
                    "item_id": item["id"],
                    "output_index": 0,
                    "content_index": 0,
                    "delta": w,
                    "logprobs": [],
                    "sequence_number": next(seq),
                },
            )
        )
    ev.append(
        _event(
            "response.output_text.done",
            {
                "item_id": item["id"],
                "output_index": 0,
                "content_index": 0,
                "text": text,
                "logprobs": [],
                "sequence_number": next(seq),
            },
        )
    )
    done = response_object(req, text, cached, rid, with_usage=send_usage)
    ev.append(
        _event(
            "response.output_item.done", {"output_index": 0, "item": done["output"][0], "sequence_number": next(seq)}
        )
    )
    ev.append(_event("response.completed", {"response": done, "sequence_number": next(seq)}))
    return ev


def models_list() -> dict[str, Any]:
    return {"object": "list", "data": [model_object(m) for m in MODELS]}


def model_object(m: str) -> dict[str, Any]:
    return {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake-upstream"}
