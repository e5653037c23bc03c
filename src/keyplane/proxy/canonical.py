"""The canonical request: one decoded path, and what keyplane makes of it (DESIGN.md hot-path rule 0).

The path is decoded once, from the raw request line (``scope["raw_path"]``), and anything a server,
a proxy or an upstream framework could read another way is refused: encoded ``/ ? # % \\``, NUL and
control characters, spaces, non-ASCII, ``.`` and ``..`` segments, empty segments (``//``, a trailing
``/``), and characters outside the path alphabet OpenAI's API uses. What is left has one reading
only, and that one string is what authorization, admission, metering, routing, the cache key, the
access log and the upstream URL all use: a request cannot be authorized as one endpoint, metered as
another and served as a third.

:func:`classify` then says what the endpoint is: the scope it needs, whether it is a model endpoint
whose usage keyplane reads (and its SSE flavour), and whether it *spends* (a call the provider bills).
Every spending call passes admission, whatever its content type or fields; an unknown POST under an
area that spends is counted as spending (fail closed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

from keyplane import errors
from keyplane.proxy import sse
from keyplane.scopes import required_scope

# Methods the OpenAI API uses. Anything else (PUT, PATCH, TRACE, CONNECT, custom verbs) is refused
# rather than passed to an upstream that might route it as a POST.
METHODS: Final = frozenset({"GET", "POST", "DELETE", "HEAD", "OPTIONS"})

# After decoding, every segment must be made of these: letters, digits and - . _ ~ : @ + = ,
# (ids like file-abc, resp_1, ft:gpt-4o-mini:org::id, model names like llama3.1:8b).
_SEGMENT: Final = re.compile(r"[A-Za-z0-9\-._~:@+=,]+")
_BAD_ESCAPE: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_seen: dict[bytes, str] = {}
# Query strings are forwarded as sent; they may not carry what could end or split a request line.
_QUERY_BAD: Final = re.compile(rb"[\x00-\x20\x7f#\\\x80-\xff]")

# Model endpoints whose usage keyplane reads -> SSE flavour (None: never streams).
MODEL_ENDPOINTS: Final[dict[str, int | None]] = {
    "/v1/chat/completions": sse.CHAT,
    "/v1/completions": sse.CHAT,
    "/v1/embeddings": None,
    "/v1/responses": sse.RESPONSES,
}

# POST paths that the provider bills (a model runs, an image or audio is made, a job is started).
# '*' stands for one id segment.
_SPENDING: Final = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/responses/compact",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/images/variations",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/batches",
    "/v1/fine_tuning/jobs",
    "/v1/fine_tuning/jobs/*/resume",
    "/v1/threads/runs",
    "/v1/threads/*/runs",
    "/v1/threads/*/runs/*/submit_tool_outputs",
    "/v1/evals/*/runs",
    "/v1/realtime/sessions",
    "/v1/realtime/client_secrets",
    "/v1/realtime/transcription_sessions",
    "/v1/videos",
    "/v1/videos/*/remix",
    "/v1/containers",
)
# POST paths under a spending area that bill nothing (cancels, metadata updates, counting, free moderation).
_FREE: Final = (
    "/v1/moderations",
    "/v1/responses/input_tokens",
    "/v1/responses/*/cancel",
    "/v1/chat/completions/*",
    "/v1/batches/*/cancel",
    "/v1/fine_tuning/jobs/*/cancel",
    "/v1/fine_tuning/jobs/*/pause",
    "/v1/threads/*/runs/*/cancel",
    "/v1/threads/*/runs/*",
    "/v1/evals/*/runs/*",
)
# Areas whose unknown POST paths are counted as spending (fail closed): model capabilities,
# responses, batches, fine-tuning, runs of threads and evals, realtime, videos, containers.
_SPENDING_PREFIXES: Final = (
    "/v1/chat/",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/images",
    "/v1/audio",
    "/v1/responses",
    "/v1/batches",
    "/v1/fine_tuning",
    "/v1/realtime",
    "/v1/videos",
    "/v1/containers",
)
_RUNS: Final = re.compile(r"^/v1/(threads|evals)/[^/]+/runs(/|$)|^/v1/threads/runs$")


def _pattern(paths: tuple[str, ...]) -> re.Pattern[str]:
    alts = "|".join(re.escape(p).replace(r"\*", "[^/]+") for p in paths)
    return re.compile(f"^(?:{alts})$")


_SPENDING_RE: Final = _pattern(_SPENDING)
_FREE_RE: Final = _pattern(_FREE)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a canonical (method, path) is."""

    path: str
    method: str
    scope: str | None  # the permission it needs; None: not proxied
    model: bool  # a model endpoint whose usage keyplane reads from the answer
    flavour: int  # its SSE flavour (0: none)
    spending: bool  # the provider bills this call: it must pass admission


def _bad_path(why: str) -> errors.APIError:
    return errors.bad_request(
        f"Invalid request path: {why}. keyplane refuses paths that could be read more than one way.",
        code="invalid_path",
    )


def canonical_path(raw: bytes) -> str:
    """The decoded path, or an APIError (400 invalid_path) when it is ambiguous."""
    path = _seen.get(raw)
    if path is not None:
        return path
    if not raw.startswith(b"/"):
        raise _bad_path("it must start with /")
    if _BAD_ESCAPE.search(raw):
        raise _bad_path("it has a malformed percent-escape")
    out: list[str] = []
    for part in raw[1:].split(b"/"):
        if not part:
            raise _bad_path("it has an empty segment (// or a trailing /)")
        try:
            seg = unquote_to_bytes(part).decode("ascii") if b"%" in part else part.decode("ascii")
        except UnicodeDecodeError:
            raise _bad_path("it has non-ASCII characters") from None
        if seg in (".", ".."):
            raise _bad_path("it has a dot segment")
        if not _SEGMENT.fullmatch(seg):
            bad = next(c for c in seg if not _SEGMENT.fullmatch(c))
            raise _bad_path(f"the character {_show(bad)} is not allowed in a path segment")
        out.append(seg)
    path = "/" + "/".join(out)
    if len(_seen) < 4096:  # the few hot paths; object ids make the rest (bounded)
        _seen[raw] = path
    return path


def check_query(qs: bytes) -> None:
    if qs and _QUERY_BAD.search(qs):
        raise errors.bad_request(
            "Invalid query string: it has control, space or non-ASCII bytes, or a '#'.", code="invalid_path"
        )


def _show(c: str) -> str:
    return repr(c) if c.isprintable() else f"U+{ord(c):04X}"


_classified: dict[tuple[str, str], Endpoint] = {}


def classify(method: str, path: str) -> Endpoint:
    """What (method, canonical path) is; raises 405 for a method the API does not use. Kept for the few hot
    paths (as :func:`canonical_path` keeps them): an Endpoint is immutable and depends on the two alone."""
    ep = _classified.get((method, path))
    if ep is not None:
        return ep
    ep = _classify(method, path)
    if len(_classified) < 4096:  # object ids make the rest (bounded)
        _classified[(method, path)] = ep
    return ep


def _classify(method: str, path: str) -> Endpoint:
    if method not in METHODS:
        raise errors.method_not_allowed(method, path)
    scope = required_scope(method, path)
    if path.startswith("/v1/models") and method not in ("GET", "HEAD"):
        # Deleting a fine-tuned model is an organization-wide act no project key may do through keyplane.
        scope = None
    flavour = MODEL_ENDPOINTS.get(path, 0) if method == "POST" else 0
    is_model = method == "POST" and path in MODEL_ENDPOINTS
    spending = method == "POST" and scope is not None and _spends(path)
    return Endpoint(path, method, scope, is_model, flavour or 0, spending)


def _spends(path: str) -> bool:
    if _SPENDING_RE.match(path):
        return True
    if _FREE_RE.match(path):
        return False
    return path.startswith(_SPENDING_PREFIXES) or bool(_RUNS.match(path))
