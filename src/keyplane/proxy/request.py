"""Reading the client's request: the body within max_body_bytes, and the few fields the proxy needs.

The body is kept as the bytes the client sent (DESIGN.md hot-path rule 3); msgspec reads only
``model``, ``stream``, ``stream_options`` and the max-token fields admission estimates from.
A JSON body that repeats a key is refused (:func:`check_one_reading`): every parser must read it alike.
The one rewrite: a chat/completions stream gets ``stream_options.include_usage = true`` so that the
gateway always learns the usage (the relay strips that chunk if the client did not ask for it).
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import msgspec
import orjson

from keyplane import errors
from keyplane.proxy import multipart
from keyplane.proxy.canonical import Endpoint

_CONTENT_LENGTH = b"content-length"
_CONTENT_TYPE = b"content-type"
_CONTENT_ENCODING = b"content-encoding"


# Bounds on what a client controls (issue #12): values outside are refused before they become money.
MAX_OUTPUT_TOKENS: Final = 1_000_000
MAX_CHOICES: Final = 128
MAX_HEADERS: Final = 128
MAX_HEADER_BYTES: Final = 64 * 1024

# The output-limit fields each endpoint reads (the largest one present is what may be generated), and llama.cpp's
# `n_predict`, which its server reads first on every one of them (docs/limits-and-billing.md).
OUTPUT_FIELDS: Final[dict[str, tuple[str, ...]]] = {  # an endpoint's output limits (the demo honours them too)
    "/v1/chat/completions": ("max_completion_tokens", "max_tokens"),
    "/v1/completions": ("max_tokens",),
    "/v1/responses": ("max_output_tokens",),
}


class Head(msgspec.Struct):
    model: str | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_output_tokens: int | None = None
    # llama.cpp's server reads its own output limit before max_tokens on its OpenAI-compatible endpoints
    n_predict: int | None = None
    n: int | None = None
    best_of: int | None = None
    background: bool | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    models: Any = None  # OpenRouter's fallback models: refused unless they name only `model` (_checked)

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens or self.max_output_tokens


@dataclass(slots=True)
class Fields:
    """What keyplane reads of a model or spending request's body (JSON or multipart form). Not frozen: made once
    per request, and a frozen dataclass sets each field through ``object.__setattr__`` (1.1 us against 0.3)."""

    model: str | None
    stream: bool = False
    include_usage: bool = False
    output_limit: int | None = None  # the limit the endpoint reads; None: the client set none
    choices: int = 1  # n (and best_of): how many answers are generated
    context_ref: bool = False  # previous_response_id / conversation: stored input not in the body
    form: dict[str, str] | None = None  # multipart text fields (images, audio)


_decoder = msgspec.json.Decoder(Head)


def check_headers(headers: list[tuple[bytes, bytes]]) -> None:
    """Bound the header count and size a request may make keyplane hold and forward, and refuse a compressed
    body (Content-Encoding) on every endpoint: keyplane reads bodies as sent (the output limit, the ids the
    ownership check looks for, a batch file's lines), and an upstream that inflates it would read another."""
    if len(headers) > MAX_HEADERS:
        raise errors.headers_too_large(MAX_HEADERS, MAX_HEADER_BYTES)
    size = 0
    encoded = False
    for k, v in headers:
        size += len(k) + len(v)
        if k == _CONTENT_ENCODING and v.strip().lower() not in (b"", b"identity"):
            encoded = True
    if size > MAX_HEADER_BYTES:
        raise errors.headers_too_large(MAX_HEADERS, MAX_HEADER_BYTES)
    if encoded:
        raise errors.bad_request(
            "keyplane does not accept compressed request bodies (Content-Encoding); send the body uncompressed.",
            code="unsupported_encoding",
        )


def read_fields(ep: Endpoint, headers: list[tuple[bytes, bytes]], body: bytes) -> Fields:
    """The fields of a model or spending request, validated; what cannot be read is refused (never skipped)."""
    ctype = b""  # a compressed body never gets here (check_headers)
    for k, v in headers:
        if k == _CONTENT_TYPE:
            ctype = v.split(b";", 1)[0].strip().lower()
    if not ep.model and ctype == b"multipart/form-data":
        form = multipart.text_fields(headers, body)
        return _checked(ep.path, Head(model=form.get("model"), n=_form_int(form, "n")), form)
    if not ep.model and not body:
        return Fields(None)
    # JSON whatever the content type says: an upstream may parse it as JSON all the same.
    return _checked(ep.path, parse_head(body), None)


def form_fields(path: str, form: dict[str, str]) -> Fields:
    """The fields of an upload read as it streams (proxy/uploads.py): from its text fields."""
    return _checked(path, Head(model=form.get("model"), n=_form_int(form, "n")), form)


def _form_int(form: dict[str, str], name: str) -> int | None:
    v = form.get(name)
    if v is None:
        return None
    try:
        return int(v.strip())
    except ValueError:
        raise errors.invalid_value(name, f"`{name}` must be an integer.") from None


def _checked(path: str, h: Head, form: dict[str, str] | None) -> Fields:
    limits = (
        ("max_tokens", h.max_tokens),
        ("max_completion_tokens", h.max_completion_tokens),
        ("max_output_tokens", h.max_output_tokens),
        ("n_predict", h.n_predict),
    )
    for name, v in limits:
        if v is not None and not 1 <= v <= MAX_OUTPUT_TOKENS:
            raise errors.invalid_value(
                name,
                f"Invalid '{name}': integer below minimum value or too large. "
                f"Expected a value between 1 and {MAX_OUTPUT_TOKENS:,}, got {v}.",
            )
    n, best_of = h.n, h.best_of
    for name, v in (("n", n), ("best_of", best_of)):
        if v is not None and not 1 <= v <= MAX_CHOICES:
            raise errors.invalid_value(
                name, f"Invalid '{name}': expected a value between 1 and {MAX_CHOICES}, got {v}."
            )
    if h.background:
        # The answer of a background response comes later, from another call: it cannot be metered
        # or held to a budget as it runs (docs/security.md).
        raise errors.invalid_value(
            "background",
            "keyplane does not proxy background responses (`background: true`): their usage cannot be metered.",
        )
    if h.models is not None and (not isinstance(h.models, list) or any(m != h.model for m in h.models)):
        # The upstream (OpenRouter) would serve the request with any of them: a model whose permissions, rate limits
        # and price keyplane never applied, billed as `model`. keyplane routes and falls back itself ([[upstreams]]).
        raise errors.invalid_value(
            "models",
            "keyplane does not proxy fallback models (`models`): a request is served, limited and billed as the one "
            "`model` it names. Send one request per model (keyplane's own fallbacks are its upstreams').",
        )
    output_limit = None
    fields = OUTPUT_FIELDS.get(path)
    if fields is not None:  # the largest of the endpoint's own limits and llama.cpp's n_predict
        for name, v in limits:
            if v is not None and (name in fields or name == "n_predict") and (output_limit is None or v > output_limit):
                output_limit = v
    so = h.stream_options
    return Fields(
        h.model,
        bool(h.stream),
        bool(so and so.get("include_usage") is True),
        output_limit,
        max(n or 1, best_of or 1),
        h.previous_response_id is not None or h.conversation is not None,
        form,
    )


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
    body: bytes = msg.get("body", b"")
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
            "payload.",
            code="invalid_body",
        )
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as e:
        text = str(e)
        if " - at `" not in text:  # the root is not an object
            raise errors.not_a_json_object() from None
        param = text.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in text else None
        raise errors.bad_request(f"Invalid request body: {text}", param=param, code="invalid_type") from None
    except (msgspec.DecodeError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
        raise errors.invalid_json() from None


class _Repeated(ValueError):
    def __init__(self, key: str, other: str | None = None) -> None:
        self.key, self.other = key, other


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Repeated(k)
            seen.add(k)
    if len(d) > 1 and len({k.casefold() for k in d}) != len(d):
        folded: dict[str, str] = {}
        for k in d:
            if (first := folded.setdefault(k.casefold(), k)) != k:
                raise _Repeated(k, first)
    return d


BIG_BODY: Final = 64 * 1024  # a body larger than this is checked in a thread, not on the event loop


# A run of this many digits may be an integer json.loads refuses (sys.get_int_max_str_digits(), at least 640)
# while orjson reads it as a float: such a body takes the exact path.
LONG_DIGITS: Final = 640
# Each ASCII digit to "0", every other byte to ".": a body holds a run of LONG_DIGITS digits exactly where its
# translation holds that many "0" in a row (what re.search(rb"[0-9]{640}") finds), found by two passes in C. The
# regular expression restarts its 640-digit match at every digit: ~8 us a KB of text, and a body of 639-digit runs
# held the interpreter ~320 ms a MB (10 s for a 32 MB body), every other request of the process waiting.
_DIGITS_AS_ZERO: Final = bytes(48 if 48 <= b <= 57 else 46 for b in range(256))
_LONG_RUN: Final = b"0" * LONG_DIGITS


def has_long_digit_run(body: bytes) -> bool:
    """True when ``body`` holds :data:`LONG_DIGITS` ASCII digits in a row; linear in its size."""
    return len(body) >= LONG_DIGITS and _LONG_RUN in body.translate(_DIGITS_AS_ZERO)


def _plainly_one_reading(body: bytes) -> bool:
    """True when ``body`` is JSON that :func:`check_one_reading`'s exact reading (``json.loads`` with
    :func:`_unique`) accepts, with no object naming a key twice, exactly or case-insensitively; False when
    unsure (the exact reading then decides). About 1.5 us for a small body, against 7 for the exact reading.

    orjson reads the body (validity) and its case-folded copy; an object that names two keys one case-folded
    key keeps one pair of them. Outside strings a colon is only a pair's separator, so the pairs of the body
    are its colons minus those inside its strings, and orjson writes a colon only between a pair's key and
    value or inside a string: the folded copy written back has as many colons as the body exactly when no
    pair was dropped. Exact only where both parsers read the same text the same way, hence the exact path
    for a body with a ``\\u`` escape (a key or a colon may be spelled with one, and case-folding must apply
    to the decoded key), nested a quarter of the recursion limit deep (json.loads recurses per level: a body
    with more objects and arrays than that is measured, below), a huge integer
    (json.loads refuses it, orjson reads a float), or anything orjson refuses (NaN, a BOM, lone surrogates,
    nesting deeper than 1024, invalid JSON) that json.loads may yet accept."""
    if b"\\u" in body or has_long_digit_run(body):
        return False
    limit = sys.getrecursionlimit() // 4
    # More objects and arrays than that (written anywhere, strings included) may nest deeper: the folded copy is
    # then written back indented (2 spaces a level: a value inside n of them starts a line with 2n spaces, and orjson
    # escapes a newline in a string), and a line indented 2*limit deep sends the body to the exact reading. A long
    # conversation is wide, not deep: it stays on this path (the exact reading costs it ~3.5 times as much).
    option = orjson.OPT_INDENT_2 if body.count(b"{") + body.count(b"[") > limit else None
    try:
        orjson.loads(body)
        if body.isascii():
            folded_b = body.lower()  # ASCII: str.casefold() is lower-casing A-Z
            out = orjson.dumps(orjson.loads(folded_b), option=option)
            colons = folded_b.count(b":")
        else:
            folded = body.decode("utf-8").casefold()  # per character: each key folded as _unique folds it
            out = orjson.dumps(orjson.loads(folded), option=option)
            colons = folded.count(":")
        return out.count(b":") == colons and (option is None or b"\n" + b"  " * limit not in out)
    except Exception:  # anything unexpected (orjson writes no more than 254 levels): the exact reading decides
        return False


def check_one_reading(body: bytes, strict: bool = True) -> None:
    """Refuse a JSON body that repeats a key in any object (``{"max_tokens": 100000, "max_tokens": 5}``), or names
    two keys of one object that differ only in case (``"MAX_TOKENS"``, ``"CONTENT"``: Go's encoding/json, which
    Ollama and LocalAI use, matches fields case-insensitively, the last one winning): keyplane's parsers keep the
    last exact key and an upstream may keep another, so the request would be admitted, priced and checked as one
    thing and run as another (or name one project's object to the ownership check and another's upstream).
    ``strict``: a body that is not JSON is refused too (a model or spending request; parse_head read it
    already), and so is one that orjson cannot read (``NaN``, a number past a double like ``1e400``, a lone
    surrogate, a BOM): admission measures and prices the body with orjson, and a body it cannot read would be
    quoted blind (its ``n``, tools and tier unread) while a lenient upstream runs all of it. About 1.5 us for
    a small body that passes (:func:`_plainly_one_reading`), 8 us otherwise."""
    if _plainly_one_reading(body):
        return
    try:
        json.loads(body, object_pairs_hook=_unique)
    except _Repeated as e:
        _refuse(e.key, e.other)
    except (ValueError, RecursionError):  # read by parse_head already; anything else it reads differently
        if strict:
            raise errors.invalid_json() from None
        return
    if strict:
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            raise errors.invalid_json() from None


def _refuse(key: str, other: str | None = None) -> NoReturn:
    key = key if len(key) <= 64 else key[:64] + "..."
    what = f"'{key}' twice" if other is None else f"'{key}' and '{other[:64]}' (one key to a case-insensitive parser)"
    raise errors.bad_request(
        f"The request body names {what} in one object: parsers disagree about which value counts, "
        "so keyplane refuses it. Send each key once.",
        param=key,
        code="duplicate_key",
    ) from None


async def one_reading(body: bytes, strict: bool = True) -> None:
    """:func:`check_one_reading`, in a thread for a large body."""
    if len(body) > BIG_BODY:
        await asyncio.to_thread(check_one_reading, body, strict)
    else:
        check_one_reading(body, strict)


def is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for k, v in headers:
        if k == _CONTENT_TYPE:
            return v.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def with_include_usage(body: bytes) -> bytes:
    """The body with stream_options.include_usage set (the one field the gateway must set)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:  # nested deeper than orjson's limit: not a body we forward
        raise errors.invalid_json() from None
    so = obj.get("stream_options")
    obj["stream_options"] = {**so, "include_usage": True} if isinstance(so, dict) else {"include_usage": True}
    return orjson.dumps(obj)
