"""Audio on chat completions, as the fake upstream answers it (audio models: gpt-audio, gpt-4o-audio-preview...).

A request whose ``modalities`` include ``audio`` gets an assistant message with ``audio`` (a few bytes of
base64, its transcript) and a usage whose completion_tokens_details.audio_tokens say how much of the output
was audio: as many tokens as the request's output limit allows past the text ones (AUDIO_OUTPUT when it sets
none). Each ``input_audio`` content part counts AUDIO_INPUT prompt tokens, reported in
prompt_tokens_details.audio_tokens.
"""

from __future__ import annotations

import time
from typing import Any, Final

AUDIO_INPUT: Final = 50  # prompt tokens per input_audio part
AUDIO_OUTPUT: Final = 100  # output tokens of audio when the request sets no limit


def input_audio_parts(req: dict[str, Any]) -> int:
    n = 0
    messages = req.get("messages")
    for m in messages if isinstance(messages, list) else []:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            n += sum(1 for p in content if isinstance(p, dict) and p.get("type") == "input_audio")
    return n


def wants_audio(req: dict[str, Any]) -> bool:
    modalities = req.get("modalities")
    return isinstance(modalities, list) and "audio" in modalities


def apply(req: dict[str, Any], usage: dict[str, Any], message: dict[str, Any] | None, rid: str) -> None:
    """Add the request's audio to a chat usage (and message) in place."""
    a_in = AUDIO_INPUT * input_audio_parts(req)
    if a_in:
        usage["prompt_tokens"] += a_in
        usage["prompt_tokens_details"]["audio_tokens"] = a_in
    if not wants_audio(req):
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return
    limit = req.get("max_completion_tokens") or req.get("max_tokens")
    text = usage["completion_tokens"]
    a_out = max(1, int(limit) - text) if isinstance(limit, int) else AUDIO_OUTPUT
    usage["completion_tokens"] = text + a_out
    usage["completion_tokens_details"]["audio_tokens"] = a_out
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if message is not None:
        message["audio"] = {
            "id": f"audio_{rid}",
            "data": "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA=",
            "expires_at": int(time.time()) + 3600,
            "transcript": message.get("content") or "",
        }
        message["content"] = None
