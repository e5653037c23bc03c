"""Reading `usage` out of upstream answers with msgspec: only the fields needed, the rest skipped.

Chat and completions report prompt_tokens / completion_tokens and prompt_tokens_details.cached_tokens;
the Responses API reports input_tokens / output_tokens and input_tokens_details.cached_tokens
(reference "Streaming usage"). Embeddings report prompt_tokens only.
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Details(msgspec.Struct):
    cached_tokens: int | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    prompt_tokens_details: _Details | None = None
    input_tokens_details: _Details | None = None

    def numbers(self) -> tuple[int, int, int]:
        """(prompt, cached, completion)."""
        p = self.prompt_tokens if self.prompt_tokens is not None else (self.input_tokens or 0)
        c = self.completion_tokens if self.completion_tokens is not None else (self.output_tokens or 0)
        d = self.prompt_tokens_details or self.input_tokens_details
        return p, (d.cached_tokens or 0) if d is not None else 0, c


class _Body(msgspec.Struct):
    usage: Usage | None = None


class _Chunk(msgspec.Struct):
    choices: list[Any] | None = None
    usage: Usage | None = None


class _ResponseEvent(msgspec.Struct):
    type: str | None = None
    response: _Body | None = None


_body = msgspec.json.Decoder(_Body)
_chunk = msgspec.json.Decoder(_Chunk)
_event = msgspec.json.Decoder(_ResponseEvent)

BadBody = (msgspec.DecodeError, msgspec.ValidationError)


def from_body(body: bytes) -> Usage | None:
    """The usage of a whole JSON answer; raises one of BadBody when it is not a JSON object."""
    return _body.decode(body).usage


def from_chunk(data: bytes) -> tuple[Usage | None, bool]:
    """(usage, is_usage_only_chunk) of one chat/completions stream chunk's data."""
    c = _chunk.decode(data)
    return c.usage, c.usage is not None and not c.choices


def from_response_event(data: bytes) -> Usage | None:
    """The usage of a Responses stream event (response.completed / incomplete / failed)."""
    e = _event.decode(data)
    return e.response.usage if e.response is not None else None
