"""Reading `usage` out of upstream answers with msgspec: only the fields needed, the rest skipped.

Chat and completions report prompt_tokens / completion_tokens and prompt_tokens_details.cached_tokens;
the Responses API reports input_tokens / output_tokens and input_tokens_details.cached_tokens
(reference "Streaming usage"). Embeddings report prompt_tokens only. Audio models on chat completions
also report prompt_tokens_details.audio_tokens and completion_tokens_details.audio_tokens
(:meth:`Usage.audio`): billing prices those at the model's audio rates. Token-priced transcriptions
(gpt-4o-transcribe) report input_tokens / output_tokens and input_token_details.audio_tokens.

The answer's top-level ``service_tier`` (the tier that served it: a request naming none is served at the
provider project's default, which may be priority) is read in the same decode and kept on the
:class:`Usage` (``service_tier``): billing settles at that tier, not the one the request asked for.

The usage API's other buckets count units (:func:`units`): images made (the answer's ``data``),
seconds of audio transcribed (``usage.seconds`` of a duration usage, or verbose_json's ``duration``).
Characters spoken are counted from the request (billing/quote_media.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import msgspec

from keyplane.billing.price import Tokens

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext


class _Details(msgspec.Struct):
    cached_tokens: int | None = None
    audio_tokens: int | None = None  # chat: the audio part of prompt_tokens / completion_tokens
    text_tokens: int | None = None  # a GPT image model's: the text part of input_tokens
    image_tokens: int | None = None  # and its image part (an edit's input images)


class _OutDetails(msgspec.Struct):
    audio_tokens: int | None = None


_NO_AUDIO: tuple[int, int] = (0, 0)


class Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    prompt_tokens_details: _Details | None = None
    input_tokens_details: _Details | None = None
    completion_tokens_details: _OutDetails | None = None
    input_token_details: _Details | None = None  # a transcription's (audio_tokens of input_tokens; text out)
    # Not the upstream's: the hosted tool calls of a Responses answer, by usage kind (filled from ``output``).
    tools: dict[str, int] | None = msgspec.field(default=None, name="@keyplane_tools")
    # Not in the upstream's usage object either: the answer's top-level ``service_tier`` (filled by the decoders).
    service_tier: str | None = msgspec.field(default=None, name="@keyplane_service_tier")

    def numbers(self) -> tuple[int, int, int]:
        """(prompt, cached, completion), each at least 0 and cached at most the prompt: an upstream answering a
        negative count (a local server's bug, a proxy in front of one) must not make a call cost less than
        nothing, which would hand a budget back."""
        p = self.prompt_tokens if self.prompt_tokens is not None else (self.input_tokens or 0)
        c = self.completion_tokens if self.completion_tokens is not None else (self.output_tokens or 0)
        d = self.prompt_tokens_details or self.input_tokens_details
        p = p if p > 0 else 0
        cached = (d.cached_tokens or 0) if d is not None else 0
        return p, min(cached, p) if cached > 0 else 0, c if c > 0 else 0

    def audio(self) -> tuple[int, int] | None:
        """(audio input, audio output) tokens of a chat usage (audio models on chat completions), or None unless
        the usage says both (then billing prices every token at the model's dearest rates). A transcription's
        usage says its audio input; its output is text."""
        if self.input_token_details is not None and self.input_token_details.audio_tokens is not None:
            return (max(self.input_token_details.audio_tokens, 0), 0)
        pd, cd = self.prompt_tokens_details, self.completion_tokens_details
        if pd is None or cd is None:
            return None
        a_in, a_out = pd.audio_tokens, cd.audio_tokens
        if a_in is None or a_out is None:
            return None
        if not a_in and not a_out:
            return _NO_AUDIO
        return (a_in if a_in > 0 else 0, a_out if a_out > 0 else 0)


class _UnitUsage(msgspec.Struct):
    seconds: float | None = None


class _Item(msgspec.Struct):
    type: str | None = None
    container_id: str | None = None
    id: str | None = None


# Output items of a Responses answer that the provider bills per call (code interpreter: per container).
_TOOL_ITEMS = {
    "web_search_call": "web_search_calls",
    "file_search_call": "file_search_calls",
    "code_interpreter_call": "code_interpreter_sessions",
    # The image generation tool (one a stored prompt enables: one named in the body is refused under money
    # controls): each call an image, metered in the images bucket (billing/quote_tools.py image_call_price).
    "image_generation_call": "images",
}


class _Body(msgspec.Struct):
    usage: Usage | None = None
    output: list[_Item] | None = None
    service_tier: str | None = None

    def with_tools(self) -> Usage | None:
        u = self.usage
        if u is None:
            return u
        u.service_tier = self.service_tier
        if not self.output:
            return u
        calls = tool_counts((item.type, item.container_id) for item in self.output)
        if calls:
            u.tools = calls
        return u


def tool_counts(items: Iterable[tuple[Any, Any]]) -> dict[str, int]:
    """Hosted tool calls by usage kind, from the (type, container_id) of a Responses answer's output items:
    a code interpreter is billed per container (session), the others per call."""
    calls: dict[str, int] = {}
    containers: set[str] = set()
    for typ, container in items:
        kind = _TOOL_ITEMS.get(typ) if isinstance(typ, str) else None
        if kind is None:
            continue
        if kind == "code_interpreter_sessions":
            if container in containers:
                continue
            containers.add(container if isinstance(container, str) else f"#{len(containers)}")
        calls[kind] = calls.get(kind, 0) + 1
    return calls


class _Chunk(msgspec.Struct):
    choices: list[Any] | None = None
    usage: Usage | None = None
    service_tier: str | None = None  # on every chat chunk, the usage chunk included


class _ResponseEvent(msgspec.Struct):
    type: str | None = None
    response: _Body | None = None


_body = msgspec.json.Decoder(_Body)
_chunk = msgspec.json.Decoder(_Chunk)
_event = msgspec.json.Decoder(_ResponseEvent)

BadBody = (msgspec.DecodeError, msgspec.ValidationError)


class _Units(msgspec.Struct):
    data: list[msgspec.Raw] | None = None
    duration: float | None = None
    usage: _UnitUsage | None = None


_units = msgspec.json.Decoder(_Units)
IMAGES = frozenset({"/v1/images/generations", "/v1/images/edits", "/v1/images/variations"})
TRANSCRIBE = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})
# Answers the proxy reads whole (small JSON) to meter them; images are relayed as they come (they may be
# tens of MiB of base64): their count is the ``n`` the request asked for.
READ_WHOLE = TRANSCRIBE | {"/v1/moderations"}
MAX_SECONDS = 10 * 86400  # a bound on what an answer may claim


def units(endpoint: str, body: bytes) -> int | None:
    """Images made or whole seconds of audio transcribed, as the answer says; None when it does not."""
    if endpoint not in IMAGES and endpoint not in TRANSCRIBE:
        return None
    try:
        u = _units.decode(body)
    except BadBody:
        return None
    if endpoint in IMAGES:
        return len(u.data) if u.data is not None else None
    secs = u.usage.seconds if u.usage is not None and u.usage.seconds is not None else u.duration
    if secs is None or not secs >= 0:
        return None
    return min(MAX_SECONDS, -int(-secs // 1))


def from_body(body: bytes) -> Usage | None:
    """The usage of a whole JSON answer; raises one of BadBody when it is not a JSON object."""
    return _body.decode(body).with_tools()


def from_chunk(data: bytes) -> tuple[Usage | None, bool]:
    """(usage, is_usage_only_chunk) of one chat/completions stream chunk's data."""
    c = _chunk.decode(data)
    u = c.usage
    if u is None:
        return None, False
    u.service_tier = c.service_tier
    return u, not c.choices


def from_response_event(data: bytes) -> tuple[str | None, Usage | None, list[str]]:
    """The ``type`` of a Responses stream event, its usage (response.completed / incomplete / failed), and the
    ids of the output items it shows (recorded as the project's own when the response is stored:
    proxy/tenancy.py)."""
    e = _event.decode(data)
    if e.response is None:
        return e.type, None, []
    ids = [item.id for item in e.response.output or () if item.id]
    return e.type, e.response.with_tools(), ids


_USAGE_KEY = b'"usage"'
_SPACE = b" \t\r\n"


class AnswerEdges:
    """The first and last :data:`EDGE` bytes of an answer relayed unread (an Images API answer, its images in
    base64 between), where its ``usage`` object is: read at the end to bill a GPT image model's call at what
    the provider reports (billing/settle.py). A JSON string cannot hold an unescaped ``"usage"``: what is
    found is a key of the answer (or of a streamed answer's last event), not text a prompt put there."""

    EDGE: Final = 16 * 1024
    __slots__ = ("head", "tail")

    def __init__(self) -> None:
        self.head = b""
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        edge = self.EDGE
        if len(self.head) < edge:
            self.head += chunk[: edge - len(self.head)]
        self.tail = chunk[-edge:] if len(chunk) >= edge else (self.tail + chunk)[-edge:]

    def usage(self) -> Usage | None:
        for part, at in ((self.tail, self.tail.rfind(_USAGE_KEY)), (self.head, self.head.find(_USAGE_KEY))):
            if at >= 0 and (obj := _object_at(part, at + len(_USAGE_KEY))) is not None:
                try:
                    return msgspec.json.decode(obj, type=Usage)
                except msgspec.DecodeError:
                    return None
        return None


def _object_at(data: bytes, i: int) -> bytes | None:
    """The JSON object after ``: `` at ``i`` of ``data``, whole (braces matched, strings skipped), or None."""
    n = len(data)
    while i < n and data[i] in _SPACE:
        i += 1
    if i >= n or data[i] != 0x3A:  # ':'
        return None
    i += 1
    while i < n and data[i] in _SPACE:
        i += 1
    if i >= n or data[i] != 0x7B:  # '{'
        return None
    start, depth, in_str = i, 0, False
    while i < n:
        c = data[i]
        if in_str:
            if c == 0x5C:  # a backslash escapes the next byte
                i += 1
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                return data[start : i + 1]
        i += 1
    return None


def image_tokens(u: Usage) -> Tokens | None:
    """A GPT image model's usage by kind, for billing (billing/settle.py): its text input, its image input (at the
    dearest input rate: ``other_in``) and its image output; input it does not split counts as image input. None
    for an answer with no usage (dall-e)."""
    if u.input_tokens is None and u.output_tokens is None:
        return None
    prompt, _cached, completion = u.numbers()
    d = u.input_tokens_details
    text = max(d.text_tokens or 0, 0) if d is not None else 0
    text = min(text, prompt)
    return Tokens(text_in=text, other_in=prompt - text, other_out=completion)


def fill_units(ctx: RequestContext, body: bytes) -> None:
    """After a successful JSON answer: the units of the non-token buckets, the tokens of a transcription
    that reports tokens instead of seconds, and the input of a moderation (free, and answered without usage:
    its tokens estimated from the request)."""
    n = units(ctx.endpoint, body)
    if n is not None:
        ctx.units = n
        if ctx.endpoint in IMAGES:  # gpt-image: tokens too, by kind (billed at their rates: billing/settle.py)
            try:
                u = from_body(body)
            except BadBody:
                u = None
            if u is not None:
                if not (ctx.prompt_tokens or ctx.completion_tokens):
                    ctx.prompt_tokens, ctx.cached_tokens, ctx.completion_tokens = u.numbers()
                ctx.modalities = image_tokens(u)
    elif ctx.endpoint in TRANSCRIBE and not (ctx.prompt_tokens or ctx.completion_tokens):  # token-priced
        try:
            u = from_body(body)
        except BadBody:  # `text`, `srt`, `vtt`: no usage (billed per minute)
            return
        if u is not None:
            ctx.prompt_tokens, ctx.cached_tokens, ctx.completion_tokens = u.numbers()
            ctx.audio_tokens = u.audio()
    elif ctx.endpoint == "/v1/moderations" and not ctx.prompt_tokens:
        from keyplane.proxy import estimate

        ctx.prompt_tokens = estimate.prompt_tokens(ctx.body)
        ctx.usage_estimated = True


def tool_calls(u: Usage) -> dict[str, list[int]] | None:
    """The hosted tool calls of an answer, for the request context: {kind: [count, cost (billing fills)]}."""
    return {k: [n, 0] for k, n in u.tools.items()} if u.tools else None
