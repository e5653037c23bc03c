"""The built-in offline upstream ``demo`` (base_url = "demo"): try keyplane with no provider key.

Model ``demo-echo`` (any ``demo-*`` name works) answers deterministically: it repeats the last user
text. Usage numbers are real token counts (o200k_base), so limits and metering behave as with a
provider. Chat completions, completions, embeddings and responses, streaming too, in OpenAI's shapes;
``n`` choices, ``logprobs``, a tool call when ``tools`` are given (and ``tool_choice`` allows one), and
``encoding_format="base64"`` embeddings.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from keyplane.proxy import estimate
from keyplane.proxy.demo_chat import completions
from keyplane.proxy.demo_common import DemoResponse, echo_pieces, error, reply
from keyplane.proxy.demo_embeddings import embeddings
from keyplane.proxy.demo_responses import responses
from keyplane.proxy.request import OUTPUT_FIELDS

MODELS = ("demo-echo",)
_JSON = b"application/json"


def loads(body: bytes) -> Any:
    return orjson.loads(body)


def answer(method: str, path_qs: str, body: bytes) -> DemoResponse:
    path = path_qs.split("?", 1)[0]
    if method == "GET" and path == "/v1/models":
        return DemoResponse(200, orjson.dumps({"object": "list", "data": [model(m) for m in MODELS]}))
    if method == "GET" and path.startswith("/v1/models/"):
        return DemoResponse(200, orjson.dumps(model(path.rsplit("/", 1)[1])))
    if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"):
        return error(
            404,
            f"Invalid URL ({method} {path}): the demo upstream serves only chat completions, "
            "completions, embeddings, responses and models.",
            code="unknown_url",
        )
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError:
        return error(400, "We could not parse the JSON body of your request.")
    if not isinstance(req, dict):
        return error(400, "The request body must be a JSON object.")
    name = str(req.get("model") or "demo-echo")
    created = int(time.time())
    rid = hashlib.sha256(body).hexdigest()[:24]
    if path == "/v1/embeddings":
        return embeddings(req, name)
    prompt = estimate.count(estimate.prompt_text(req))
    text = reply(req)
    cut = _cut(req, path, text)  # a model stops at the output limit it is given: so does the demo
    if cut is not None:
        text = cut
    pieces = echo_pieces(text)
    out_tokens = estimate.count(text)
    stream = bool(req.get("stream"))
    if path == "/v1/responses":
        return responses(req, name, rid, created, text, pieces, prompt, out_tokens, stream, cut is not None)
    return completions(
        req,
        path == "/v1/chat/completions",
        name,
        rid,
        created,
        text,
        pieces,
        prompt,
        out_tokens,
        stream,
        cut is not None,
    )


def _cut(req: dict[str, Any], path: str, text: str) -> str | None:
    """``text`` cut to the request's output limit (whole words, as many as fit), or None when it fits: what a model
    does (finish_reason ``length``, a response ``incomplete``), so that a priced demo model never writes, and bills,
    more than admission reserved for it."""
    limits = [v for f in OUTPUT_FIELDS[path] if isinstance(v := req.get(f), int) and not isinstance(v, bool) and v >= 0]
    if not limits or estimate.count(text) <= (limit := min(limits)):
        return None
    pieces = echo_pieces(text)
    lo, hi = 0, len(pieces)  # the most words whose text fits (binary search: a few counts, whatever the length)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate.count("".join(pieces[:mid])) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return "".join(pieces[:lo]).rstrip(" ")


def model(m: str) -> dict[str, Any]:
    return {"id": m, "object": "model", "created": 1_735_689_600, "owned_by": "keyplane-demo"}
