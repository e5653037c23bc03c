"""The per-request context: what the request is, and what each step of the flow found out about it.

The proxy fills it as the request flows (authenticate -> authorize -> admit -> forward -> relay) and
hands it to the features' steps (keyplane.pipeline): billing's admission may add x-ratelimit-* pairs
to ``extra_headers`` (sent on every response of the request, errors included) and leaves its
``reservation`` (and, under a money control, its ``hold``); the response cache says ``cache``; prefix
routing leaves its ``route``; billing's settle fills ``cost_micros``; metering leaves the usage ``record``.
Every field is declared here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from keyplane.snapshot import KeyEntry

if TYPE_CHECKING:
    from keyplane.billing.price import Tokens
    from keyplane.cache.affinity import Decision
    from keyplane.limits import Reservation
    from keyplane.proxy.router import Deployment
    from keyplane.proxy.uploads import Upload
    from keyplane.usage.journal import Record


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
    upload: Upload | None = None  # a multipart upload streamed or spooled, not held in ``body`` (proxy/uploads.py)
    content_type: bytes | None = None  # POST /v1/files only: to read a batch input file (billing/batches.py)
    query: bytes = b""  # the query string as sent (forwarded as is; part of the response-cache key)
    upstream: str | None = None  # name of the upstream that answered
    # The upstreams the request may go to (set before admission): billing reserves a request that names no
    # service tier at the dearest tier they are known to serve by default, and teaches the one that answered.
    pool: tuple[Deployment, ...] = ()
    # The upstream's own x-request-id, shown to the client as x-request-id; ``request_id`` stays
    # keyplane's own (unique: usage records are keyed by it, and a client cannot choose it).
    upstream_request_id: str | None = None
    attempts: int = 0
    status: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    units: int = 0  # images made, characters spoken, seconds of audio transcribed (usage API buckets)
    # The usage by modality (text, audio...) where the upstream reports it (a realtime response.done):
    # billing prices each at its own rate; prompt/cached/completion_tokens above are its sums.
    modalities: Tokens | None = None
    # (audio input, audio output) tokens of a chat usage that reports them (audio models on chat completions):
    # billing prices them at the audio rates and the rest at the text rates; metering records them.
    audio_tokens: tuple[int, int] | None = None
    # Hosted tool calls of a Responses answer by usage kind (web_search_calls...): [count, micro-dollars].
    tool_calls: dict[str, list[int]] | None = None
    # The service tier the answer says served it (its ``service_tier``): billing settles at it, whatever was asked.
    service_tier: str | None = None
    cost_micros: int = 0  # cost in micro-dollars, filled by billing's settle step (keyplane.pipeline)
    usage_estimated: bool = False  # True when output tokens were estimated from the relayed text
    started: float = 0.0  # monotonic seconds
    latency_ms: float = 0.0
    ttft_ms: float | None = None  # time to the first byte of the answer sent to the client
    disconnected: bool = False
    # The upstream received the call and failed to answer it (a read timeout, a broken answer): it may have run
    # and billed it, so it was not retried, and it is billed at its estimate (proxy/handler.py).
    upstream_received: bool = False
    error: str | None = None  # short reason when the request failed after admission
    # Who called (the kill switch's new-origin detector): filled by the proxy from the socket / headers.
    client_ip: str | None = None
    user_agent: str | None = None
    # Added to every response of this request (admission's x-ratelimit-* headers).
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # Left by the steps (keyplane.pipeline) for the ones after them:
    reservation: Reservation | None = None  # billing's admission, reconciled by its settle
    hold: int = -1  # billing's admission: the slot of its hold (usage/holds.py), freed once the record is journaled
    cache: Literal["hit", "miss", "bypass"] | None = None  # the response cache's verdict
    route: Decision | None = None  # prefix routing's choice, released at settle
    cost_input_micros: int | None = None  # billing: the input part of cost_micros (metering splits it)
    record: Record | None = None  # metering: the usage record journaled

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
