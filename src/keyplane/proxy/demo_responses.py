"""The demo's Responses API (``/v1/responses``): one output message echoing the input, as a response
object or as the stream of its events.
"""

from __future__ import annotations

from typing import Any

import orjson

from keyplane.proxy.demo_common import DemoResponse, sse


def responses(
    req: dict[str, Any],
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
    """``cut``: the text was cut at ``max_output_tokens`` (the response is ``incomplete``, as OpenAI's is)."""
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
        "status": "incomplete" if cut else "completed",
        "model": name,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
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
    ev = [sse({"type": "response.created", "response": pending, "sequence_number": next(n)}, "response.created")]
    item = {**msg, "status": "in_progress", "content": []}
    ev.append(
        sse(
            {"type": "response.output_item.added", "output_index": 0, "item": item, "sequence_number": next(n)},
            "response.output_item.added",
        )
    )
    ids = {"item_id": msg["id"], "output_index": 0, "content_index": 0}
    ev.append(
        sse(
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
            sse(
                {"type": "response.output_text.delta", **ids, "delta": p, "logprobs": [], "sequence_number": next(n)},
                "response.output_text.delta",
            )
        )
    ev.append(
        sse(
            {"type": "response.output_text.done", **ids, "text": text, "logprobs": [], "sequence_number": next(n)},
            "response.output_text.done",
        )
    )
    ev.append(
        sse(
            {"type": "response.output_item.done", "output_index": 0, "item": msg, "sequence_number": next(n)},
            "response.output_item.done",
        )
    )
    done = "response.incomplete" if cut else "response.completed"
    ev.append(sse({"type": done, "response": resp, "sequence_number": next(n)}, done))
    return DemoResponse(200, events=ev)
