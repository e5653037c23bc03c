"""The policies as the request path sees them (in memory, reloaded when the control plane moves) and
the checks the proxy calls: models and hosted tools after the body is read.

Model ids match exactly (case-insensitive), plus the dated snapshots of an id (``gpt-4o`` covers
``gpt-4o-2024-08-06``) and fine-tunes of it (``ft:gpt-4o:...``); an id ending in ``*`` is a prefix
(keyplane extension). A request must pass the project's policy and its key's.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from keyplane import errors, model_names
from keyplane.access import inspect, ip
from keyplane.access.models import AccessPolicy
from keyplane.store.models import Meta

# After an id, what makes one of its snapshots: read loosely for a deny list (anything after it too), exactly
# for an allow list (``gpt-4o-mini`` allows ``gpt-4o-mini-2024-07-18``, not ``gpt-4o-mini-2024-07-18-x``).
_DATED: Final = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4}|latest|preview)")
_SNAPSHOT: Final = re.compile(r"(?=-)(-(\d{4}-\d{2}-\d{2}|\d{4}))?(-(latest|preview))?")
# Spending paths that rightly name no model: the run's, the session's (checked when it connects), containers.
_NO_MODEL: Final = re.compile(
    r"^/v1/threads/[^/]+/runs/[^/]+/submit_tool_outputs$|^/v1/realtime/client_secrets$"
    r"|^/v1/containers(/|$)"
)
# A run uses its assistant's stored tools unless it names its own (``tools`` overrides them).
_RUN: Final = re.compile(r"^/v1/threads(/[^/]+)?/runs$")
_ASSISTANT_TOOLS: Final = ("code_interpreter", "file_search")
_JSON_TOOL_PATHS: Final = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/realtime",
    "/v1/assistants",
    "/v1/threads",
    "/v1/evals",
)


class BatchFacts(Protocol):
    """What the requests of a batch input file ask for (billing/batch_input.Facts): name -> first line."""

    models: dict[str, int]
    tools: dict[str, int]
    stored_prompt: int | None
    unnamed: int | None
    unchecked: str | None


@dataclass(frozen=True)
class ModelPolicy:
    mode: str  # allow_list | deny_list
    model_ids: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"object": "project.model_permissions", "mode": self.mode, "model_ids": list(self.model_ids)}

    def allows(self, model: str) -> bool:
        if self.mode == "allow_list":
            return any(_matches(e, model, exact=True) for e in self.model_ids)
        # A deny list is read generously (what it names, however spelled, stays out): a namespaced id
        # (``openai/gpt-4o``, ``models/gpt-4o``) and a spelling that is not plain ASCII (fullwidth letters, a
        # zero-width space, a Cyrillic o) are refused; no provider's model id needs either.
        if not _plain(model):
            return False
        # Every name the request counts as (keyplane.model_names): Ollama's `llama3.1:latest` is `llama3.1`,
        # OpenRouter's `openai/gpt-4o:nitro` / `:online` is `openai/gpt-4o` (a fine-tune, ft:base:org::id, is
        # _matches').
        return not any(_matches(e, m) for e in self.model_ids for m in model_names.names(model))


def _one_reading(body: bytes) -> inspect.Asked:
    """What a JSON body asks for, if every parser reads it alike (no duplicated key); else the 400."""
    try:
        asked = inspect.read(body)
    except inspect.Unreadable as e:
        raise errors.bad_request(
            f"{e} It cannot be checked against this project's access policy.", code="invalid_body"
        ) from None
    if asked.duplicated:
        name = sorted(asked.duplicated)[0]
        raise errors.bad_request(
            f"The request body repeats the key '{name}'; with an access policy set, "
            "each key may appear once per object (keys that differ only in case count as one).",
            param=name,
            code="duplicate_key",
        )
    return asked


def _plain(model: str) -> bool:
    m = model.strip()
    return m.isascii() and m.isprintable() and " " not in m


def _matches(entry: str, model: str, exact: bool = False) -> bool:
    e, m = entry.strip().casefold(), model.strip().casefold()
    if e.endswith("*"):
        return m.startswith(e[:-1])
    if _snapshot_of(e, m, exact):
        return True
    # A fine-tune of the id or of one of its snapshots: ft:gpt-4o:acme::id, ft:gpt-4o-2024-08-06:acme::id.
    return m.startswith("ft:") and not e.startswith("ft:") and _snapshot_of(e, m[3:].split(":", 1)[0], exact)


def _snapshot_of(e: str, m: str, exact: bool) -> bool:
    if m == e:
        return True
    if not m.startswith(e):
        return False
    rest = m[len(e) :]
    return bool(_SNAPSHOT.fullmatch(rest) if exact else _DATED.match(rest))


@dataclass
class Policies:
    models: dict[tuple[str, str], ModelPolicy] = field(default_factory=dict)  # (scope, id) -> policy
    disabled_tools: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    ips: dict[tuple[str, str], tuple[ip.IPNet, ...]] = field(default_factory=dict)  # ("org", "org") too
    trusted_proxies: tuple[ip.IPNet, ...] = ()
    # True while billing's admission reads batch input files and holds a batch's creation to these policies
    # (check_batch, from billing/batches.py); else batches are refused while a policy is set.
    batches_checked: Callable[[], bool] = lambda: False
    revision: int = -1  # the control plane's revision these policies are at least as new as
    behind: Callable[[int], bool] = lambda rev: False  # True while the snapshot is newer than ``rev``
    _reloaded: asyncio.Event = field(default_factory=asyncio.Event)

    async def load(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            rev = (await conn.execute(select(Meta.value).where(Meta.name == "revision"))).scalar() or 0
            rows = (
                await conn.execute(
                    select(AccessPolicy.kind, AccessPolicy.scope, AccessPolicy.target_id, AccessPolicy.value)
                )
            ).all()
        models: dict[tuple[str, str], ModelPolicy] = {}
        tools: dict[tuple[str, str], frozenset[str]] = {}
        ips: dict[tuple[str, str], tuple[ip.IPNet, ...]] = {}
        for kind, scope, target, value in rows:
            data = orjson.loads(value)
            if kind == "model":
                models[(scope, target)] = ModelPolicy(data["mode"], tuple(data["model_ids"]))
            elif kind == "tools":
                off = frozenset(t for t in inspect.TOOLS if not data.get(t, {}).get("enabled", True))
                if off:
                    tools[(scope, target)] = off
            elif kind == "ip" and data["cidrs"]:
                ips[(scope, target)] = ip.parse_cidrs(data["cidrs"], strict=False)
        self.models, self.disabled_tools, self.ips = models, tools, ips
        self.revision = max(self.revision, rev)
        self._reloaded.set()
        self._reloaded = asyncio.Event()

    async def current(self, wait: float = 2.0) -> None:
        """Wait (bounded) while the snapshot has loaded a newer revision than these policies: a key rotated
        a moment ago must not be served before its policies are (fail closed: 503 past ``wait``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.behind(self.revision):
            left = deadline - loop.time()
            if left <= 0:
                raise errors.stale_authority(wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reloaded.wait(), left)

    # --- the request path ----------------------------------------------------------------------

    def address(self, client: tuple[str, int] | None, headers: list[tuple[bytes, bytes]]) -> str:
        """The client's address as the allowlists see it (behind ``trusted_proxies``: the forwarded one)."""
        return ip.client_address(client[0] if client else None, headers, self.trusted_proxies)

    def check_org_ip(self, client: tuple[str, int] | None, headers: list[tuple[bytes, bytes]]) -> None:
        """The organization's allowlist, before any key is looked at (the proxy, realtime, the admin API and the
        dashboard), so a refused address cannot tell a valid key (403) from an invalid one (401). The CLI on
        the server is never held to it: that is how an operator locked out lifts it (docs/access-control.md)."""
        cidrs = self.ips.get(("org", "org"))
        if cidrs is None:
            return
        address = self.address(client, headers)
        if not ip.allows(cidrs, address):
            raise errors.ip_not_allowed(address, "organization")

    def model_visible(self, project_id: str | None, key_id: str, model: str) -> bool:
        """Whether the key's project's and its own model permissions allow ``model`` (GET /v1/models)."""
        return all(
            p.allows(model)
            for s in (("key", key_id), ("project", project_id or ""))
            if (p := self.models.get(s)) is not None
        )

    def check_ip(
        self, project_id: str | None, key_id: str, client: tuple[str, int] | None, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Right after authentication: the 403 naming the address seen when an allowlist refuses it."""
        if not self.ips:
            return
        lists = [
            (name, c)
            for name, s in (
                ("organization", ("org", "org")),
                ("project", ("project", project_id or "")),
                ("API key", ("key", key_id)),
            )
            if (c := self.ips.get(s)) is not None
        ]
        if not lists:
            return
        address = self.address(client, headers)
        for name, cidrs in lists:
            if not ip.allows(cidrs, address):
                raise errors.ip_not_allowed(address, name)

    def _rules(
        self, project_id: str | None, key_id: str
    ) -> tuple[list[tuple[tuple[str, str], ModelPolicy]], dict[str, tuple[str, str]]]:
        """The model policies that apply (key's, project's) and each disabled hosted tool with who disabled it."""
        scopes = [("key", key_id)] + ([("project", project_id)] if project_id else [])
        mpols = [(s, p) for s in scopes if (p := self.models.get(s)) is not None]
        off: dict[str, tuple[str, str]] = {}
        for s in scopes:
            for t in self.disabled_tools.get(s, ()):
                off.setdefault(t, s)
        return mpols, off

    def check_batch(self, project_id: str | None, key_id: str, file_id: str | None, facts: BatchFacts | None) -> None:
        """POST /v1/batches: every request of its input file held to the policies, as if sent on its own (the
        403 names the model or tool, and the line of the file). ``facts`` None: the file was not read."""
        if not self.models and not self.disabled_tools:
            return
        mpols, off = self._rules(project_id, key_id)
        if not mpols and not off:
            return
        fid = (file_id or "")[:64]
        if facts is None or facts.unchecked is not None:
            why = (
                f"its input file `{fid}` was not uploaded through keyplane with purpose=batch"
                if facts is None and file_id
                else "it names no input file"
                if facts is None
                else f"its input file `{fid}`: {facts.unchecked}"
            )
            raise errors.access_refused(
                f"This batch cannot be checked against the model and hosted tool permissions of its project or key: "
                f"{why}. Upload the input file through keyplane (POST /v1/files with purpose=batch), with every "
                "line a JSON object, so that each request it holds is checked.",
                "batch_not_permitted",
            )

        def at(e: errors.APIError, line: int | None) -> errors.APIError:  # where the request stands in the file
            if line is not None:
                e.message = f"{e.message} (Line {line} of the batch's input file `{fid}`.)"
            return e

        for t, line in sorted(facts.tools.items()):
            if t in off:
                raise at(errors.tool_not_permitted(t, *off[t]), line)
        if facts.stored_prompt is not None and off:
            raise at(
                errors.access_refused(
                    "A stored prompt may enable hosted tools keyplane cannot see; while hosted tools ("
                    + ", ".join(sorted(off))
                    + ") are disabled for this project or key, send the prompt's "
                    "content instead of its id.",
                    "tool_not_permitted",
                ),
                facts.stored_prompt,
            )
        if "web_search" in off:
            for m, line in sorted(facts.models.items()):
                if inspect.search_model(m):
                    raise at(errors.tool_not_permitted("web_search", *off["web_search"]), line)
        for scope, pol in mpols:
            for m, line in sorted(facts.models.items()):
                if not pol.allows(m):
                    raise at(errors.model_not_permitted(m, scope[0], scope[1], pol.mode), line)
            if facts.unnamed is not None:
                where = f"project {scope[1]}" if scope[0] == "project" else f"API key {scope[1]}"
                raise at(
                    errors.access_refused(
                        f"This request names no model, so the provider would choose one; with "
                        f"model permissions set on {where}, name the model.",
                        "model_not_permitted",
                    ),
                    facts.unnamed,
                )

    def check_request(
        self,
        project_id: str | None,
        key_id: str,
        path: str,
        method: str,
        model: str | None,
        spending: bool,
        body: bytes,
        is_json: bool,
    ) -> None:
        """Raise the 403 (or 400) for a model or hosted tool outside the project's or the key's policy."""
        if not self.models and not self.disabled_tools:
            return
        mpols, off = self._rules(project_id, key_id)
        if not mpols and not off:
            return
        if method == "POST" and path == "/v1/batches":
            if self.batches_checked():  # its requests, read from its input file, are checked at admission (check_batch)
                _one_reading(body)  # the input_file_id checked is the one every parser reads
                return
            # The batch's requests sit in an uploaded file keyplane does not read: no way to hold them to a policy.
            raise errors.access_refused(
                "Batches cannot be checked against this project's model or hosted tool "
                "permissions, so they are refused while such a policy is set.",
                "batch_not_permitted",
            )
        if method == "POST" and path.startswith("/v1/containers") and "code_interpreter" in off:
            raise errors.tool_not_permitted("code_interpreter", *off["code_interpreter"])  # its sandboxes
        models: set[str] = {model} if model else set()
        if body and (is_json or body.lstrip()[:1] in (b"{", b"[")):  # whatever content type it claims
            asked = _one_reading(body)
            models |= asked.models
            for t in sorted(asked.tools):
                if t in off:
                    raise errors.tool_not_permitted(t, *off[t])
            if (
                method == "POST"
                and _RUN.match(path)
                and "tools" not in asked.top_keys
                and (held := [t for t in _ASSISTANT_TOOLS if t in off])
            ):
                # The assistant may have been given the tool before the policy: keyplane cannot see its tools.
                raise errors.access_refused(
                    f"A run without `tools` uses its assistant's stored tools, which may include {' or '.join(held)}"
                    ", disabled for this project or key; pass `tools` (e.g. only function tools) with the run.",
                    "tool_not_permitted",
                )
            if asked.stored_prompt and off:
                raise errors.access_refused(
                    "A stored prompt may enable hosted tools keyplane cannot see; while hosted tools ("
                    + ", ".join(sorted(off))
                    + ") are disabled for this project or key, send the prompt's "
                    "content instead of its id.",
                    "tool_not_permitted",
                )
        elif body and any(path.startswith(p) for p in _JSON_TOOL_PATHS) and off:
            raise errors.bad_request(
                "The request body must be JSON to be checked against this project's hosted tool permissions.",
                code="invalid_body",
            )
        for m in sorted(models):
            if "web_search" in off and inspect.search_model(m):
                raise errors.tool_not_permitted("web_search", *off["web_search"])
        for scope, pol in mpols:
            for m in sorted(models):
                if not pol.allows(m):
                    raise errors.model_not_permitted(m, scope[0], scope[1], pol.mode)
            if not models and spending and not _NO_MODEL.match(path):
                # The provider would choose the model (images: dall-e-2, or gpt-image-1 when a parameter only it
                # takes is sent; a run: its assistant's): not one a deny list can be checked against either.
                where = f"project {scope[1]}" if scope[0] == "project" else f"API key {scope[1]}"
                raise errors.access_refused(
                    f"This request names no model, so the provider would choose one; with "
                    f"model permissions set on {where}, name the model.",
                    "model_not_permitted",
                )
