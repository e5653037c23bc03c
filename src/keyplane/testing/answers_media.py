"""The fake upstream's answers to the media endpoints (images, speech, transcriptions and translations,
moderations) with the usage the provider reports for each, and the hosted tool calls a response makes.
"""

from __future__ import annotations

import re
from typing import Any

_FIELD = re.compile(rb'name="([a-z_]+)"\r\n\r\n([^\r]{0,200})\r\n')
# A transcription's reported duration: one second per this many bytes of upload.
AUDIO_BYTES_PER_SECOND = 1000
# Image output tokens of a GPT image model by (quality, size): OpenAI's image generation guide.
_IMAGE_OUTPUT = {
    (q, s): n
    for q, square, other in (("low", 272, 408), ("medium", 1056, 1584), ("high", 4160, 6240))
    for s, n in (("1024x1024", square), ("1024x1536", other), ("1536x1024", other))
}


def media(path: str, data: dict[str, Any], body: bytes, multipart: bool) -> Any:
    """Images (``n`` of them; gpt-image models report token usage), speech (audio bytes), transcriptions
    (a duration usage: one second per AUDIO_BYTES_PER_SECOND bytes uploaded; gpt-4o-transcribe and its mini
    report tokens instead: 10 audio tokens a second, 5 text tokens in, 20 out; plain text without usage for
    ``response_format`` text, srt or vtt) and moderations."""
    if multipart:
        data = {k.decode(): v.decode("utf-8", "replace") for k, v in _FIELD.findall(body)}
    model = str(data.get("model") or "")
    if path.startswith("/v1/images/"):
        try:
            n = max(1, min(10, int(data.get("n") or 1)))
        except (TypeError, ValueError):
            n = 1
        out: dict[str, Any] = {"created": 0, "data": [{"url": f"https://fake.invalid/{i}.png"} for i in range(n)]}
        if model.startswith("gpt-image"):
            # OpenAI's image output tokens by quality and size (medium for auto); 50 text tokens in, and for an
            # edit 500 image tokens per input image.
            per = _IMAGE_OUTPUT.get((str(data.get("quality") or "auto"), str(data.get("size") or "auto")), 1056)
            images_in = 0
            if path == "/v1/images/edits":
                images_in = 500 * (body.count(b'name="image') if multipart else len(data.get("images") or [1]))
            out["usage"] = {
                "input_tokens": 50 + images_in,
                "output_tokens": per * n,
                "total_tokens": 50 + images_in + per * n,
                "input_tokens_details": {"text_tokens": 50, "image_tokens": images_in},
            }
        return out
    if path == "/v1/audio/speech":
        return b"ID3fake-audio" + b"\0" * 64
    if path.startswith("/v1/audio/"):
        if data.get("response_format") in ("text", "srt", "vtt"):  # plain text: no usage to read
            return "fake\n"
        secs = max(1, len(body) // AUDIO_BYTES_PER_SECOND)
        if model in ("gpt-4o-transcribe", "gpt-4o-mini-transcribe"):  # token usage: 10 audio tokens a second
            audio = min(15_000, secs * 10)
            usage = {"input_tokens": audio + 5, "output_tokens": 20, "total_tokens": audio + 25}
            details = {"input_token_details": {"audio_tokens": audio, "text_tokens": 5}}
            return {"text": "fake", "usage": {"type": "tokens", **usage, **details}}
        return {"text": "fake", "usage": {"type": "duration", "seconds": secs}}
    if path == "/v1/moderations":
        inputs = data.get("input")
        n = len(inputs) if isinstance(inputs, list) else 1
        return {
            "id": "modr-fake",
            "model": model or "omni-moderation-latest",
            "results": [{"flagged": False, "categories": {}, "category_scores": {}} for _ in range(n)],
        }
    return None


_TOOL_ITEMS = {
    "web_search": "web_search_call",
    "web_search_preview": "web_search_call",
    "file_search": "file_search_call",
    "code_interpreter": "code_interpreter_call",
}


def with_tool_calls(obj: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """A response that used its hosted tools: one call of each (two code interpreter calls, one container)."""
    items: list[dict[str, Any]] = []
    for t in data.get("tools") or []:
        item = _TOOL_ITEMS.get(t.get("type", "")) if isinstance(t, dict) else None
        if item is None:
            continue
        if item == "code_interpreter_call":
            items += [
                {
                    "type": item,
                    "id": f"ci_{i}",
                    "status": "completed",
                    "container_id": "cntr_fake",
                    "code": "1+1",
                    "outputs": [],
                }
                for i in range(2)
            ]
        else:
            items.append({"type": item, "id": f"{item}_1", "status": "completed"})
    if items:
        obj["output"] = items + list(obj.get("output") or [])
    return obj
