"""A batch input file read once, at its upload: what its requests may cost and what they ask for.

billing/batches.py keeps both against the file id. :func:`estimate` quotes every line (JSONL) with the
synchronous quote code of its endpoint (chat completions, completions, embeddings, responses) at the batch
price (the ``[batch]`` factor of the price table); a line keyplane cannot price or bound makes the file
unbounded, with the reason. Hosted tools of a Responses line are bounded by the line's own
``max_tool_calls`` (keyplane cannot write one into an uploaded file, as it does into a synchronous call):
each call at the dearest enabled tool's full price (the batch factor applies to tokens), plus up to the
model's context window of input per model turn, as a synchronous call reserves. A line naming a stored prompt
(``body.prompt.id``: the prompt may enable any hosted tool, which the line does not show) is held to the same:
it needs ``max_tool_calls``, each call at the dearest tool the price table prices.

:class:`Facts` records what the requests ask for, whatever they cost: every model and hosted tool (read as
keyplane.access reads a request body: nested models, tool choices, search models...) and every URL, each
with the first line naming it, so that the batch's creation is held to the key's scopes and to the model
and hosted tool permissions in force then (docs/access-control.md "Batches").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from keyplane import errors
from keyplane.billing import quote as quote_mod
from keyplane.billing import quote_tools
from keyplane.billing.price import MICROS
from keyplane.billing.prices import PriceTable

MAX_LINES: Final = 50_000  # the Batch API's own limit of requests per file
MAX_MODELS: Final = 1000  # distinct models a file may name and still be checked against model permissions
LINE_KINDS: Final = {
    "/v1/chat/completions": "batch_completions",
    "/v1/completions": "batch_completions",
    "/v1/responses": "batch_responses",
    "/v1/embeddings": "batch_embeddings",
}


@dataclass(slots=True)
class Facts:
    """What a batch input file's requests ask for: model, hosted tool and URL -> the first line naming it;
    ``unchecked`` says why they cannot all be known (a line keyplane cannot read with certainty)."""

    models: dict[str, int] = field(default_factory=dict)
    tools: dict[str, int] = field(default_factory=dict)
    urls: dict[str, int] = field(default_factory=dict)
    stored_prompt: int | None = None  # the first line using a stored prompt (its tools are not visible)
    unnamed: int | None = None  # the first line naming no model (the provider would choose it)
    unchecked: str | None = None

    def read(self, raw: bytes, n: int, obj: Any) -> None:
        """Line ``n`` (``obj``: it parsed as JSON, or None)."""
        if self.unchecked is not None:
            return
        from keyplane.access import inspect

        try:  # the whole line, as the provider reads it: a second `body` or `url` key is seen too
            asked = inspect.read(raw)
        except inspect.Unreadable as e:
            self.unchecked = f"line {n}: {e}"
            return
        if asked.duplicated or not isinstance(obj, dict):
            self.unchecked = (
                f"line {n} repeats the key '{sorted(asked.duplicated)[0][:40]}' in one object (keys compared "
                "case-insensitively, as Go's encoding/json reads them)"
                if asked.duplicated
                else f"line {n} is not a JSON object"
            )
            return
        for m in asked.models:
            self.models.setdefault(m, n)
        if len(self.models) > MAX_MODELS:
            self.unchecked = f"it names more than {MAX_MODELS} models"
        for t in asked.tools:
            self.tools.setdefault(t, n)
        url, body = obj.get("url"), obj.get("body")
        # The request is the line's `body`: its stored prompt stands there (the top of the line never holds one,
        # but a provider that reads either is held to it too).
        if (asked.stored_prompt or stored_prompt(body)) and self.stored_prompt is None:
            self.stored_prompt = n
        if isinstance(url, str):
            self.urls.setdefault(url.split("?", 1)[0][:200], n)
        if self.unnamed is None and not (isinstance(body, dict) and isinstance(body.get("model"), str)):
            self.unnamed = n

    def to_json(self) -> dict[str, Any]:
        return {
            "models": self.models,
            "tools": self.tools,
            "urls": self.urls,
            "stored_prompt": self.stored_prompt,
            "unnamed": self.unnamed,
            "unchecked": self.unchecked,
        }

    @classmethod
    def from_json(cls, data: Any) -> Facts:
        """As kept in the file's row; a row written before keyplane kept them is unchecked."""
        if not isinstance(data, dict):
            return cls(unchecked="it was uploaded before keyplane read the requests of batch files")
        return cls(
            dict(data.get("models") or {}),
            dict(data.get("tools") or {}),
            dict(data.get("urls") or {}),
            data.get("stored_prompt"),
            data.get("unnamed"),
            data.get("unchecked"),
        )


@dataclass(slots=True)
class Estimate:
    """What a batch input file may cost at the batch price; ``cost`` None: it cannot be bounded (``why``)."""

    cost: int | None
    why: str | None = None
    lines: int = 0
    models: list[str] = field(default_factory=list)  # the models priced (an output line naming none: the dearest)
    facts: Facts = field(default_factory=Facts)
    # Hosted tools the requests enable: micro-dollars per call by usage kind (the dearest type of each kind)
    tool_prices: dict[str, int] = field(default_factory=dict)


def stored_prompt(body: Any) -> bool:
    """A request body naming a stored prompt (``prompt: {"id": ...}``), whose hosted tools the body does not show;
    a body sent as a string holding JSON is read too (a lenient reader would)."""
    if isinstance(body, str) and body.strip().startswith("{"):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
    return isinstance(body, dict) and isinstance(body.get("prompt"), dict)


def _unbounded(why: str, lines: int = 0, facts: Facts | None = None) -> Estimate:
    return Estimate(None, why[:500], lines, facts=facts if facts is not None else Facts(unchecked=why[:500]))


def estimate(prices: PriceTable, content: bytes, default_max_tokens: int) -> Estimate:
    """Quote every line of a batch input file (JSONL) at the batch price: the worst case of the whole file;
    and read what every line asks for (:class:`Facts`), priced or not."""
    total = n = 0
    why: str | None = None
    models: set[str] = set()
    facts = Facts()
    per_call: dict[str, int] = {}
    for raw in content.splitlines():
        if not raw.strip():
            continue
        n += 1
        if n > MAX_LINES:
            over = f"it has more than {MAX_LINES} requests"
            facts.unchecked = over
            return _unbounded(over, n, facts)
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        facts.read(raw, n, obj)
        if why is not None:
            continue  # unbounded already: the rest is read for the access checks only
        priced = _line(prices, obj, f"line {n} of the input file", default_max_tokens)
        if isinstance(priced, str):
            why = priced
            continue
        if facts.unchecked is not None:  # read two ways (a repeated key): priced neither way
            why = facts.unchecked
            continue
        cost, model, tools = priced
        total += cost
        models.add(model)
        for kind, micros in tools.items():
            per_call[kind] = max(per_call.get(kind, 0), micros)
    if n == 0:
        return _unbounded("the input file has no requests")
    if why is not None:
        return _unbounded(why, n, facts)
    return Estimate(total, None, n, sorted(models)[:100], facts, per_call)


def _line(prices: PriceTable, obj: Any, where: str, default_max_tokens: int) -> tuple[int, str, dict[str, int]] | str:
    """(micro-dollars at the batch price, the model, its hosted tools' price per call by usage kind) of one
    request of a batch, or why it cannot be bounded."""
    from keyplane.proxy import canonical, request

    if obj is None:
        return f"{where} is not JSON"
    url = obj.get("url") if isinstance(obj, dict) else None
    body = obj.get("body") if isinstance(obj, dict) else None
    if not isinstance(url, str) or url.split("?", 1)[0] not in LINE_KINDS:
        return f"{where} calls `{str(url)[:60]}`, which keyplane does not price in a batch"
    if not isinstance(body, dict):
        return f"{where} has no JSON `body`"
    url = url.split("?", 1)[0]
    data = orjson.dumps(body)
    try:
        f = request.read_fields(canonical.classify("POST", url), [], data)
    except errors.APIError as e:
        return f"{where}: {e.message}"
    q = quote_mod.quote(prices, url, f.model, data, f.output_limit, f.context_ref, None, default_max_tokens)
    if q.unpriced is not None:
        return f"{where}: {q.unpriced.message}"
    if q.estimate is not None:
        return f"{where}: {q.estimate}"
    per = dict(q.tools or {})
    stored = stored_prompt(body)  # a stored prompt may enable any hosted tool, which the line does not show
    token_cost, tools = q.cost, 0
    if per or stored:
        calls = body.get("max_tool_calls")
        if not isinstance(calls, int) or isinstance(calls, bool) or calls < 0:
            what = (
                f"enables hosted tools ({', '.join(sorted(per))})"
                if per
                else "names a stored prompt, which may enable hosted tools,"
            )
            return (
                f"{where} {what} and sets no `max_tool_calls`: keyplane cannot write one into an uploaded "
                "file, so their calls are not bounded; set `max_tool_calls` in each request that enables "
                "hosted tools or names a stored prompt"
            )
        if per:
            token_cost -= calls * max(per.values())  # the tool calls the quote counted, at their full price
        if stored:
            for kind, micros in quote_tools.tool_prices(prices).items():
                per[kind] = max(per.get(kind, 0), micros)
            if not per:
                return f"{where} names a stored prompt, which may enable hosted tools, and the price table prices none"
            if not q.tools:  # the quote did not count the model turns of the prompt's tool calls: as it would
                if q.price is None or not q.price.context_window:
                    return (
                        f"{where} names a stored prompt, which may enable hosted tools, and the model "
                        f"`{q.model}` has no context_window in the price table"
                    )
                seen = (calls + 1) * max(q.prompt, q.price.context_window)
                token_cost = max(token_cost, q.price.max_cost(seen, q.tokens - q.prompt))
        tools = calls * max(per.values())  # at their full price: the batch factor applies to tokens
    if q.body is not None and q.price is not None and not q.price.max_output:
        # keyplane cannot write the output limit into an uploaded file: what it reserves must bind the model
        return f"{where} sets no output limit and the model `{q.model}` has no max_output in the price table"
    model = q.model or ""
    return -(-token_cost * prices.batch_factor(model) // MICROS) + tools, model, per
