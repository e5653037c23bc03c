"""The demo's embeddings (``/v1/embeddings``): a deterministic vector per input from its SHA-256, as
floats or ``encoding_format="base64"``, with the inputs' token counts as usage.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

import orjson

from keyplane import errors
from keyplane.proxy import estimate
from keyplane.proxy.demo_common import DemoResponse, error

MAX_DIMENSIONS = 3072  # text-embedding-3-large's size, the largest OpenAI serves
MAX_INPUTS = 2048  # OpenAI's limit on inputs per embeddings request


def embeddings(req: dict[str, Any], name: str) -> DemoResponse:
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
        return error(
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
