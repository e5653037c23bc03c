"""The per-request context handed to the admission and settle hooks.

The proxy fills it as the request flows (authenticate -> authorize -> admit -> forward -> settle);
"Limits and billing" and "Metering" read it through two hooks in ``rt.extras``:

- ``rt.extras["admit"]``: ``async (ctx) -> None``, called after authentication, authorization and
  body parsing, before any upstream call. It may raise an :class:`keyplane.errors.APIError` (429,
  quota...) and may append ``(name, value)`` byte pairs to ``ctx.extra_headers`` (x-ratelimit-*);
  they are added to every response of this request, errors included.
- ``rt.extras["settle"]``: ``async (ctx) -> None``, called once after the response is complete,
  streams, client disconnects and failures after the upstream call included. Exceptions it raises
  are logged, never shown to the client (the response is already sent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keyplane.snapshot import KeyEntry


@dataclass(slots=True)
class RequestContext:
    request_id: str
    key: KeyEntry
    project_id: str | None
    endpoint: str  # the path, e.g. /v1/chat/completions
    method: str = "POST"
    model: str | None = None
    stream: bool = False
    # The body as parsed for admission (estimates): max_tokens and friends; None for non-JSON bodies.
    body: bytes = b""
    max_tokens: int | None = None  # the output limit the endpoint reads (validated: 1..MAX_OUTPUT_TOKENS)
    # The provider bills this call (proxy/canonical.py): admission must price it or refuse it.
    spending: bool = False
    # The input refers to stored context (previous_response_id, conversation): its size is not in the body.
    context_ref: bool = False
    form: dict[str, str] | None = None  # multipart text fields of an upload (model, n, size, quality...)
    query: bytes = b""  # the query string as sent (forwarded as is; part of the response-cache key)
    upstream: str | None = None  # name of the upstream that answered
    # The upstream's own x-request-id, shown to the client as x-request-id; ``request_id`` stays
    # keyplane's own (unique: usage records are keyed by it, and a client cannot choose it).
    upstream_request_id: str | None = None
    attempts: int = 0
    status: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_micros: int = 0  # cost in micro-dollars, filled by billing's settle step (hooks.py order 10)
    usage_estimated: bool = False  # True when output tokens were estimated from the relayed text
    started: float = 0.0  # monotonic seconds
    latency_ms: float = 0.0
    ttft_ms: float | None = None  # time to the first byte of the answer sent to the client
    disconnected: bool = False
    error: str | None = None  # short reason when the request failed after admission
    # Who called (the kill switch's new-origin detector): filled by the proxy from the socket / headers.
    client_ip: str | None = None
    user_agent: str | None = None
    # Added to every response of this request (admission's x-ratelimit-* headers).
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # Free room for the hooks (e.g. the admission's reservation handle, for settle to reconcile).
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
