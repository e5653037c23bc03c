"""The demo's chat completions and completions (``/v1/chat/completions``, ``/v1/completions``): ``n``
choices, ``logprobs``, a tool call when ``tools`` are given, streamed or not, in OpenAI's shapes.
"""

from __future__ import annotations

from typing import Any

import orjson

from keyplane.proxy import estimate
from keyplane.proxy.demo_common import DemoResponse, error, last_user_text, sse

MAX_N = 128  # OpenAI's bound on `n`
MAX_OUTPUT = 4 * 1024 * 1024  # characters of answer text per request, all choices together (bounded work)


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


def completions(
    req: dict[str, Any],
    chat: bool,
    name: str,
    rid: str,
    created: int,
    text: str,
    pieces: list[str],
    prompt: int,
    out_tokens: int,
    stream: bool,
    cut: bool = False,
) -> DemoResponse:
    """``cut``: the text was cut at the request's output limit (finish_reason ``length``)."""
    obj = "chat.completion" if chat else "text_completion"
    n = req.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N or n * len(text) > MAX_OUTPUT:
        return error(
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
    finish = "tool_calls" if call else "length" if cut else "stop"
    if not stream:
        choices = []
        for i in range(n):
            choice: dict[str, Any] = {"index": i, "logprobs": lp, "finish_reason": finish}
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
    for c in range(n):
        for i, d in enumerate(deltas):
            last = i == len(deltas) - 1
            ch = {"index": c, "delta": d, "logprobs": None, "finish_reason": finish if last else None}
            if not chat:
                ch = {"index": c, "text": d["text"], "logprobs": None, "finish_reason": finish if last else None}
            events.append(sse({**base, "choices": [ch], **({"usage": None} if include else {})}))
    if include:
        events.append(sse({**base, "choices": [], "usage": _chat_usage(prompt, out_tokens * n)}))
    events.append(b"data: [DONE]\n\n")
    return DemoResponse(200, events=events)


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
    said = last_user_text(req).strip()
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
