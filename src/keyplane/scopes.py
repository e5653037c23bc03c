"""Permission vocabulary and the endpoint -> scope map, as data in one place.

A key's permissions are ``all``, ``read_only`` or a restricted list of scope strings
``api.<area>.read|write`` (``api.model.request`` for model capabilities), the areas of the
platform's restricted keys (reference/openai-surface.md "Restricted permissions").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# area -> (label, path prefixes under /v1, the scope a write needs)
AREAS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "model": (
        "Models and model capabilities",
        (
            "/v1/models",
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/images",
            "/v1/audio",
            "/v1/moderations",
        ),
    ),
    "responses": ("Responses", ("/v1/responses", "/v1/conversations")),
    "assistants": ("Assistants", ("/v1/assistants",)),
    "threads": ("Threads", ("/v1/threads",)),
    "files": ("Files", ("/v1/files", "/v1/uploads")),
    "fine_tuning": ("Fine-tuning", ("/v1/fine_tuning",)),
    "batch": ("Batch", ("/v1/batches",)),
    "vector_stores": ("Vector stores", ("/v1/vector_stores",)),
    "evals": ("Evals", ("/v1/evals",)),
}

# Paths whose POST is a model request rather than a write of stored objects.
_MODEL_REQUEST_PREFIXES: Final = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/images",
    "/v1/audio",
    "/v1/moderations",
)

ALL_SCOPES: Final[frozenset[str]] = frozenset(
    {f"api.{a}.read" for a in AREAS} | {f"api.{a}.write" for a in AREAS if a != "model"} | {"api.model.request"}
)
READ_ONLY_SCOPES: Final[frozenset[str]] = frozenset(s for s in ALL_SCOPES if s.endswith(".read"))

# The prefix table, longest first, so that /v1/completions never matches /v1/chat/completions' rule.
_PREFIXES: Final = sorted(
    ((p, area) for area, (_, ps) in AREAS.items() for p in ps), key=lambda t: len(t[0]), reverse=True
)


def area_of(path: str) -> str | None:
    for prefix, area in _PREFIXES:
        if path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "?"):
            return area
    return None


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs, or None when no area covers the path (refused by default)."""
    area = area_of(path)
    if area is None:
        return None
    if area == "model":
        if method in ("GET", "HEAD") and path.startswith("/v1/models"):
            return "api.model.read"
        if path.startswith(_MODEL_REQUEST_PREFIXES):
            return "api.model.request"
        return "api.model.read" if method in ("GET", "HEAD") else "api.model.request"
    return f"api.{area}.read" if method in ("GET", "HEAD") else f"api.{area}.write"


@dataclass(frozen=True, slots=True)
class Permissions:
    """What a key may do. ``mode`` is ``all``, ``read_only`` or ``restricted``."""

    mode: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    def to_json(self) -> str | list[str]:
        return self.mode if self.mode != "restricted" else sorted(self.scopes)


ALL: Final = Permissions("all", ALL_SCOPES)
READ_ONLY: Final = Permissions("read_only", READ_ONLY_SCOPES)


class InvalidPermissions(ValueError):
    pass


def parse_permissions(value: object) -> Permissions:
    """From the API/CLI/store form: "all", "read_only", or a list of scope strings."""
    if value is None or value == "all" or value == []:
        # An empty scope list means "no restriction", as in the platform's key update API.
        return ALL
    if value in ("read_only", ["api.all.read"]):
        return READ_ONLY
    if isinstance(value, str):
        # A comma-separated list from the CLI.
        value = [s.strip() for s in value.split(",") if s.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) for s in value):
        raise InvalidPermissions('permissions must be "all", "read_only" or a list of scope strings')
    unknown = sorted(set(value) - ALL_SCOPES)
    if unknown:
        import difflib

        names = ["all", "read_only", *sorted(ALL_SCOPES)]
        shown = [u[:100] for u in unknown[:10]]  # what the caller sent, bounded
        more = ", ..." if len(unknown) > 10 else ""
        near = {u: difflib.get_close_matches(u, names, n=1, cutoff=0.6) for u in shown}
        hints = "".join(f" Did you mean {m[0]!r} for {u!r}?" for u, m in near.items() if m)
        raise InvalidPermissions(
            f'unknown scope(s): {", ".join(shown)}{more}.{hints} Permissions are "all", "read_only" or scopes '
            f"(comma-separated): {', '.join(sorted(ALL_SCOPES))}"
        )
    scopes = frozenset(value)
    # A write implies the read of the same area, as on the platform.
    scopes |= {s.replace(".write", ".read") for s in scopes if s.endswith(".write")}
    if "api.model.request" in scopes:
        scopes |= {"api.model.read"}
    if scopes == ALL_SCOPES:
        return ALL
    return Permissions("restricted", scopes)
