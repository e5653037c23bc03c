"""Reading the client's request: the body within max_body_bytes, and the few fields the proxy needs.

The body is kept as the bytes the client sent (DESIGN.md hot-path rule 3); msgspec reads only
``model``, ``stream``, ``stream_options`` and the max-token fields admission estimates from.
The one rewrite: a chat/completions stream gets ``stream_options.include_usage = true`` so that the
gateway always learns the usage (the relay strips that chunk if the client did not ask for it).
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from keyplane import errors

_CONTENT_LENGTH = b"content-length"
_CONTENT_TYPE = b"content-type"


class Head(msgspec.Struct):
    model: str | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_output_tokens: int | None = None

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens or self.max_output_tokens


_decoder = msgspec.json.Decoder(Head)


async def read_body(scope: dict[str, Any], receive: Any, limit: int) -> bytes:
    """The whole request body, or a 413 as soon as it is known to be larger than ``limit``."""
    for k, v in scope["headers"]:
        if k == _CONTENT_LENGTH:
            try:
                if int(v) > limit:
                    raise errors.too_large(limit)
            except ValueError:
                raise errors.bad_request("Invalid Content-Length header.") from None
            break
    msg = await receive()
    body = msg.get("body", b"")
    if not msg.get("more_body"):
        if len(body) > limit:
            raise errors.too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while True:  # chunked upload: count while reading
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise errors.too_large(limit)
        parts.append(chunk)
        if not msg.get("more_body"):
            return b"".join(parts)


class ClientGone(Exception):
    """The client disconnected while sending its body."""


def parse_head(body: bytes) -> Head:
    if not body:
        raise errors.bad_request(
            "We could not parse the JSON body of your request: the body is empty. The OpenAI API expects a JSON "
            "payload.", code="invalid_body")
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as e:
        text = str(e)
        if " - at `" not in text:  # the root is not an object
            raise errors.not_a_json_object() from None
        param = text.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in text else None
        raise errors.bad_request(f"Invalid request body: {text}", param=param, code="invalid_type") from None
    except msgspec.DecodeError:
        raise errors.invalid_json() from None


def is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for k, v in headers:
        if k == _CONTENT_TYPE:
            return v.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def with_include_usage(body: bytes) -> bytes:
    """The body with stream_options.include_usage set (the one field the gateway must set)."""
    obj = orjson.loads(body)
    so = obj.get("stream_options")
    obj["stream_options"] = {**so, "include_usage": True} if isinstance(so, dict) else {"include_usage": True}
    return orjson.dumps(obj)
