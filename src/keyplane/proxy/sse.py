"""SSE relay: pass events on as they arrive, learn the usage, drop the usage chunk if not asked for.

Each upstream chunk is cut at its last event boundary; the complete events go to the client at once,
the partial tail waits for the next chunk. Only an event that mentions ``"usage":{`` (chat and
completions) or a final ``response.*`` event (Responses API) is parsed (DESIGN.md hot-path rule 4);
the same decode reads the ``service_tier`` that served the request (every chat chunk carries it, the
usage chunk included; ``response.service_tier`` of the final event), which billing settles at.
The generated text is collected as raw JSON strings, to estimate output tokens should the stream end
without usage (client disconnect, upstream death).
"""

from __future__ import annotations

import contextlib
import re
from typing import Final

from keyplane.errors import APIError
from keyplane.proxy import usage as _usage
from keyplane.proxy.usage import Usage

CHAT: Final = 1  # chat/completions and completions chunks
RESPONSES: Final = 2  # Responses API events

_DONE = b"data: [DONE]\n\n"
MAX_KEPT: Final = 256 * 1024  # generated text kept per stream for the estimate (then: bytes // 3 tokens)
_SPLIT = re.compile(rb"\r?\n\r?\n")
_CHAT_TEXT = re.compile(rb'"(?:content|text|arguments|refusal|reasoning_content)":\s?"((?:[^"\\]|\\.)*)"')
_RESP_TEXT = re.compile(rb'"delta":\s?"((?:[^"\\]|\\.)*)"')
_USAGE_MARKS = (b'"usage":{', b'"usage": {')
_FINAL_EVENTS = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')
_FINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Output the model may write without streaming it (reasoning): a stream cut before its usage may have cost more
# than its text shows (proxy/handler.py bills such a cut at the output it reserved).
_REASONING = b"reasoning"
# A chat answer's audio (``delta.audio.id``): the project's own, so that a later turn may give it back by id
# (proxy/object_refs.py AUDIO_FIELD). An id the pattern misses stays unowned: refused when named (fail closed).
_AUDIO = b'"audio"'
_AUDIO_ID = re.compile(rb'"audio":\s?\{[^{}]*?"id":\s?"([A-Za-z0-9_\-]{1,128})"')


def _boundary(buf: bytes) -> int:
    """Index just past the last complete event in buf (0 when none)."""
    i = buf.rfind(b"\n\n")
    j = buf.rfind(b"\r\n\r\n")
    return max(i + 2 if i >= 0 else 0, j + 4 if j >= 0 else 0)


def _data_of(event: bytes) -> bytes:
    lines = [ln[5:].lstrip(b" ") for ln in event.splitlines() if ln.startswith(b"data:")]
    return b"\n".join(lines)


def error_event(err: APIError) -> bytes:
    """An OpenAI-shaped error as an SSE event: the SDKs raise it from the stream."""
    return b"data: " + err.body() + b"\n\n"


def _later(kept: Usage | None, u: Usage) -> Usage:
    """The usage to bill of two a chat stream reported, ``u`` the later: a usage is the request's so far, so the
    later one, unless it reports fewer output tokens (or as many and fewer input tokens) than the one kept."""
    if kept is None:
        return u
    p0, _, c0 = kept.numbers()
    p1, _, c1 = u.numbers()
    return u if (c1, p1) >= (c0, p0) else kept


class StreamRelay:
    __slots__ = (
        "_buf",
        "_kept",
        "_text",
        "audio_ids",
        "held",
        "item_ids",
        "kind",
        "pieces",
        "reasoned",
        "strip_usage",
        "uncounted",
        "usage",
    )

    def __init__(self, kind: int, strip_usage: bool) -> None:
        self.kind = kind
        self.strip_usage = strip_usage
        self.usage: Usage | None = None
        self.item_ids: list[str] = []  # the output items a Responses stream's terminal event shows
        self.audio_ids: list[str] = []  # the audio answers a chat stream carries
        self.reasoned = False  # the stream showed reasoning (items, summaries, reasoning_content deltas)
        self.pieces: list[bytes] = []
        self._kept = 0  # bytes in pieces; past MAX_KEPT only their length is counted (bounded memory)
        self.uncounted = 0
        self._buf = b""
        self._text = _RESP_TEXT if kind == RESPONSES else _CHAT_TEXT
        # The final `data: [DONE]` is held back until the usage is settled, so that a client that saw
        # the end of the stream can count on the usage being recorded (DESIGN.md hot-path rule 6).
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send the client now (complete events only; may be empty)."""
        buf = self._buf + chunk if self._buf else chunk
        cut = _boundary(buf)
        if cut == 0:
            self._buf = buf
            return b""
        if cut == len(buf):
            out, self._buf = buf, b""
        else:
            out, self._buf = buf[:cut], buf[cut:]
        return self._inspect(out)

    def flush(self) -> bytes:
        """What is left when the upstream ends (an event with no blank line after it)."""
        out, self._buf = self._buf, b""
        return self._inspect(out) if out else b""

    def _inspect(self, out: bytes) -> bytes:
        if not self.reasoned and _REASONING in out:
            self.reasoned = True
        if out.endswith(_DONE):
            out, self.held = out[: -len(_DONE)], _DONE
        if self.kind == CHAT and _AUDIO in out:
            for m in _AUDIO_ID.finditer(out):
                aid = m.group(1).decode("ascii")
                if aid not in self.audio_ids and len(self.audio_ids) < 64:
                    self.audio_ids.append(aid)
        if self._kept < MAX_KEPT:
            found = self._text.findall(out)
            self.pieces.extend(found)
            self._kept += sum(map(len, found))
        else:
            self.uncounted += len(out)
        if self.kind == RESPONSES and self.held:  # after the terminal event: keep holding, in order
            self.held += out
            return b""
        if self.kind == RESPONSES:
            if any(m in out for m in _FINAL_EVENTS):
                # The terminal event (and anything after it) is held back until the usage is settled,
                # as chat's [DONE] is: a client that saw response.completed can count on the record. It is
                # known by its `type`: the name may stand in any event as a string the request echoes
                # (`instructions`, `metadata` in response.created), which must neither hide the usage nor hold.
                keep: list[bytes] = []
                hold: list[bytes] = []
                for ev in _SPLIT.split(out):
                    if not ev:
                        continue
                    if not hold and any(m in ev for m in _FINAL_EVENTS):
                        kind: str | None = None
                        u: _usage.Usage | None = None
                        ids: list[str] = []
                        with contextlib.suppress(*_usage.BadBody):
                            kind, u, ids = _usage.from_response_event(_data_of(ev))
                        if kind in _FINAL_TYPES:
                            self.usage, self.item_ids = u or self.usage, ids
                            hold.append(ev + b"\n\n")
                            continue
                    (hold if hold else keep).append(ev + b"\n\n")
                self.held += b"".join(hold)
                return b"".join(keep)
            return out
        # Every usage a chat stream reports is read, not only the first: a server asked for
        # `continuous_usage_stats` (vLLM, SGLang) puts the usage so far in every chunk, the whole request's last.
        if not any(m in out for m in _USAGE_MARKS):
            return out
        kept: list[bytes] = []
        dropped = False
        for ev in _SPLIT.split(out):
            if not ev:
                continue
            if any(m in ev for m in _USAGE_MARKS):
                try:
                    u, only = _usage.from_chunk(_data_of(ev))
                except _usage.BadBody:
                    u, only = None, False
                if u is not None:
                    self.usage = _later(self.usage, u)
                if only and self.strip_usage:
                    dropped = True
                    continue
            kept.append(ev)
        if not dropped:
            return out
        return b"".join(ev + b"\n\n" for ev in kept)
