"""Prompt tokens counted at admission, with the model's own tokenizer (limits/encodings.py: which
encoding a model uses, and how it is built without a download). A model without one, or whose encoding is
still being built, counts one token per UTF-8 byte, an upper bound for any byte-level tokenizer
(``upper_bound``); settle reconciles to the real usage.

Chat prompts are counted the way OpenAI's cookbook does: 3 tokens per message, the role and content,
1 for a name, 3 to prime the reply; every other string a request holds is counted too (an upper
bound). Images count as the most one image is billed; what the body does not hold (files, audio,
stored prompts, earlier items) is flagged for admission to reserve the model's context window
(billing/quote.py). Settle corrects everything to the real usage.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from keyplane import items, model_names
from keyplane.limits import encodings


def estimate(text: str) -> int:
    """A typical count (one token per four bytes of English), for display and the demo: never for limits."""
    return (len(text.encode("utf-8", "surrogatepass")) + 3) // 4


def upper_bound(text: str) -> int:
    """The most tokens any byte-level tokenizer makes of ``text``: one per UTF-8 byte (BPE starts from
    bytes and only merges; byte-fallback tokenizers too). What a model without a known tokenizer
    reserves: a quarter of it, the usual estimate, under-counts CJK or emoji text up to 4x, and a race
    of such requests could spend past a hard limit before settle corrects it."""
    return len(text.encode("utf-8", "surrogatepass"))


# Short strings' counts, per encoding: every message repeats its role, every part its type ("user", "text"), and
# short contents and tool names recur. A lookup is ~50 ns; a call into tiktoken's Rust encoder costs a few us and
# releases the GIL, which a busy serving thread then waits to take back whenever another thread wants it (the
# usage applier's): about 4% of the serving loop's throughput under load (docs/benchmarks.md). Bounded: at most
# SHORT_ENTRIES strings of at most SHORT_CHARS characters per encoding, forgotten all at once when full.
SHORT_CHARS = 64
SHORT_ENTRIES = 8192
_short_counts: dict[str, dict[str, int]] = {}


class Counter:
    """Counts the prompt of one model; ``count`` is the hot function."""

    __slots__ = ("_core", "_encode", "_short", "image")

    def __init__(self, model: str) -> None:
        self.image = image_tokens(model)  # what one input image counts
        name = encodings.encoding_name(model)
        enc = encodings.get(name) if name else None
        self._encode = enc.encode_ordinary if enc is not None else None
        # tiktoken's Rust encoder itself, without Encoding.encode_ordinary's Python frame around it; that
        # frame's one other job (text with lone surrogates, which the Rust side refuses) is :meth:`count`'s.
        core = getattr(getattr(enc, "_core_bpe", None), "encode_ordinary", None)
        self._core = core if core is not None else self._encode
        self._short = _short_counts.setdefault(name, {}) if enc is not None and name else None

    def count(self, text: str) -> int:
        if not text:
            return 0
        short = self._short
        if short is not None and len(text) <= SHORT_CHARS:
            n = short.get(text)
            if n is None:
                n = self._encoded(text)
                if len(short) >= SHORT_ENTRIES:
                    short.clear()
                short[text] = n
            return n
        return self._encoded(text)

    def _encoded(self, text: str) -> int:
        if self._core is None:  # no tokenizer for this model (or not loaded yet): its UTF-8 bytes
            return upper_bound(text)
        try:
            return len(self._core(text))
        except UnicodeEncodeError:  # lone surrogates: Encoding.encode_ordinary replaces them, then encodes
            assert self._encode is not None
            return len(self._encode(text))

    def content(self, v: Any) -> int:
        """A message content, a responses input item, a prompt: its tokens (see :func:`measure`)."""
        return self.scan(v).tokens

    def scan(self, v: Any, scan: Scan | None = None, keys: bool = False) -> Scan:
        """Walks ``v`` and counts it as an upper bound: every string in it is counted (keys like ``text``,
        ``content``, ``arguments``, ``summary`` alike), numbers by their text, images at their largest size;
        parts whose size is not in the body (files, audio, item references, ids of stored files) set
        ``scan.unbounded``. Recursion is bounded by ``MAX_DEPTH`` (nothing deeper is walked)."""
        scan = scan or Scan()
        n = self._walk(v, 0, scan, keys)
        if keys and n:
            # A schema is rendered into the prompt whole, its structure too: the separators of an `enum` of 2,000
            # short values are 2,000 tokens or more that no string holds. Its JSON text bounds that rendering.
            with contextlib.suppress(orjson.JSONEncodeError, TypeError):  # nested past orjson's limit (unbounded)
                n = max(n, self.count(orjson.dumps(v).decode()))
        scan.tokens += n
        return scan

    def _walk(self, node: Any, depth: int, scan: Scan, keys: bool) -> int:
        """The tokens of ``node`` at ``depth`` (what :meth:`scan` adds up); sets ``scan.unbounded``."""
        if isinstance(node, str):
            return self.count(node)
        if isinstance(node, bool) or node is None:
            return 0
        if isinstance(node, int | float):
            # Its text, as the provider renders it (a tool schema's `enum`, `minimum`, `default`...): a 19-digit
            # integer is seven tokens, not one.
            return self.count(str(node))
        if depth > MAX_DEPTH:
            scan.unbounded = True  # nothing a model reads nests this deep: not worth guessing
            return 0
        n = 0
        depth += 1
        if isinstance(node, list):
            # A plain text message (most of a long conversation) is counted as the walk below counts it, where the
            # walk would count it: no keys read, not past MAX_DEPTH.
            plain = not keys and depth <= MAX_DEPTH
            for x in node:
                if isinstance(x, str):
                    n += self.count(x)
                elif (
                    plain
                    and type(x) is dict
                    and len(x) == 2
                    and type(role := x.get("role")) is str
                    and type(text := x.get("content")) is str
                ):
                    n += self.count(role) + self.count(text)
                else:
                    n += self._walk(x, depth, scan, keys)
            return n
        if isinstance(node, dict):
            t = node.get("type")
            if not isinstance(t, str):  # a schema property may be named "type" (its value an object)
                t = None
            if t in _IMAGE_TYPES:
                scan.images += 1
                return self.image  # the data or URL says nothing of the size billed: the most it may be
            if t in _UNSEEN_TYPES or not _UNSEEN_KEYS.isdisjoint(node) or (t is not None and items.by_id(node)):
                scan.unbounded = True
                return 0
            if keys:  # a schema's property names are read by the model, and billed, too
                for k in node:
                    if isinstance(k, str):
                        n += self.count(k)
            # Every value, ids and enums too: which strings end up in the prompt is the provider's chat template's
            # business (vLLM takes any role string and ChatML renders it; some templates render tool call ids).
            for x in node.values():
                n += self.count(x) if isinstance(x, str) else self._walk(x, depth, scan, keys)
        return n

    def rest(self, req: dict[str, Any], read: frozenset[str], scan: Scan) -> None:
        """The top-level fields of a request that its endpoint's counter does not read and that are not one of
        OpenAI's parameters carrying no prompt text (``_PARAMS``): an OpenAI-compatible server's own fields may be
        rendered into the prompt it bills (vLLM's ``documents``, ``chat_template_kwargs``), so they count as a schema
        does (its strings and keys, at least its JSON text).
        A chat template sent in the request (vLLM's ``chat_template``) renders what it likes: not in the body."""
        for k, v in req.items():
            if k in read or k in _PARAMS:
                continue
            if k == "chat_template" and v is not None:
                scan.unbounded = True
            self.scan(v, scan, keys=True)  # at least its JSON text: a template renders it with its structure

    def prompt(self, v: Any, scan: Scan) -> None:
        """A prompt that may be given as token ids (completions' ``prompt``, embeddings' ``input``): an array of
        integers, or an array of such arrays, counts one token per id; anything else is :meth:`scan`'s. (Elsewhere
        a list of integers is text the model reads: a schema's ``enum``.)"""
        if isinstance(v, list) and v:
            if all(_is_int(x) for x in v):
                scan.tokens += len(v)
                return
            if all(isinstance(x, list) and x and all(_is_int(i) for i in x) for x in v):
                scan.tokens += sum(len(x) for x in v)
                return
        self.scan(v, scan)

    def chat(self, req: dict[str, Any], scan: Scan) -> None:
        scan.tokens += 3
        messages = req.get("messages")
        if isinstance(messages, list):
            scan.tokens += 4 * len(messages)  # per message: its framing (ChatML's, Llama's: 4; its role is text)
            for m in messages:  # a previous audio answer given back by id: its audio is read from the provider's
                if isinstance(m, dict) and isinstance(a := m.get("audio"), dict) and a.get("id") is not None:
                    scan.unbounded = True
                    break
        self.scan(messages, scan)
        for k in ("tools", "functions", "response_format"):
            if req.get(k):
                self.scan(req[k], scan, keys=True)
        if req.get("prediction"):  # Predicted Outputs: what is not used is billed as completion tokens
            predicted = Scan()
            self.scan(req["prediction"], predicted)
            scan.predicted = predicted.tokens
            scan.unbounded = scan.unbounded or predicted.unbounded
        tools = req.get("tools")
        if req.get("web_search_options") is not None or _hosted(tools) or _searches(req):
            scan.hosted_tools = True

    def responses(self, req: dict[str, Any], scan: Scan) -> None:
        self.scan(req.get("instructions"), scan)
        inp = req.get("input")
        if isinstance(inp, list):
            scan.tokens += 3 * len(inp)
            if any(isinstance(e, dict) and items.bare(e) for e in inp):  # an item that is only its id
                scan.unbounded = True
        self.scan(inp, scan)
        if req.get("tools"):
            self.scan(req["tools"], scan, keys=True)
        if req.get("text"):  # a structured output's schema (text.format) is read by the model, and billed
            self.scan(req["text"], scan, keys=True)
        if _hosted(req.get("tools")) or _searches(req):
            scan.hosted_tools = True
        if req.get("prompt") is not None:  # a stored prompt template: its text is at the provider, and the
            scan.unbounded = True  # hosted tools it may enable are not in the body either
            scan.hosted_tools = True


class Scan:
    """What counting a request found: its prompt tokens (an upper bound for what is in the body), and
    whether the provider bills input that is not in the body, or hosted tools billed per call."""

    __slots__ = ("hosted_tools", "images", "predicted", "tokens", "unbounded")

    def __init__(self) -> None:
        self.tokens = 0
        self.images = 0  # input images, each counted at its model's image_tokens
        self.unbounded = False
        self.hosted_tools = False
        self.predicted = 0  # a chat prediction's tokens: billed as output (rejected_prediction_tokens)


# Images are billed by their size, which the body does not tell (a URL, or data keyplane does not
# decode): each counts as the most a model bills for one image: IMAGE_TOKENS_MAX for most (gpt-4.1-mini's
# 1536 patches x 1.62, high-detail tiles on gpt-4o: under 2,500, with a margin), more for the models known to
# bill more (_DEAR_IMAGES: OpenAI's vision pricing bills gpt-4o-mini's images at 2,833 base + 5,667 tokens per
# 512 px tile, up to 8 tiles at detail high, so that they cost what gpt-4o's do). A model known by another name
# (an operator's alias) sets `image_tokens` in its price entry (billing/quote_tokens.py reserves the rest).
IMAGE_TOKENS_MAX = 6_000
_DEAR_IMAGES: tuple[tuple[str, int], ...] = (("gpt-4o-mini", 2_833 + 8 * 5_667),)


def image_tokens(model: str) -> int:
    """The most tokens one input image is billed on ``model`` (a dated snapshot, a provider prefix, a tag or a
    fine-tune of a model bill as it does)."""
    m = model_names.base_model(model)
    if model_names.is_fine_tune(m):
        m = m[len(model_names.FINE_TUNE) :]
    for prefix, n in _DEAR_IMAGES:
        if m.startswith(prefix):
            return n
    return IMAGE_TOKENS_MAX


MAX_DEPTH = 64
_IMAGE_TYPES = frozenset({"image_url", "input_image", "image"})
# Parts billed by what is not in the body: stored files, uploads, audio, references to earlier items (and any
# item given by its id without its content: keyplane/items.py).
_UNSEEN_TYPES = frozenset({"file", "input_file", "input_audio", "audio", "item_reference"})
_UNSEEN_KEYS = frozenset({"file_id", "file_url", "file_data"})
_FUNCTION_TOOLS = frozenset({"function", "custom"})
# The fields each endpoint's counter reads itself (Counter.chat, .responses, .prompt).
_READ: dict[str, frozenset[str]] = {
    "/v1/chat/completions": frozenset({"messages", "tools", "functions", "response_format", "prediction"}),
    "/v1/responses": frozenset({"instructions", "input", "tools", "text", "prompt"}),
    "/v1/completions": frozenset({"prompt", "suffix"}),
    "/v1/embeddings": frozenset({"input"}),
}
# OpenAI's request parameters that put no text in the prompt (limits, sampling, routing, metadata, what to return).
_PARAMS = frozenset(
    {
        "model", "n", "best_of", "stream", "stream_options", "temperature", "top_p", "max_tokens",
        "max_completion_tokens", "max_output_tokens", "seed", "presence_penalty", "frequency_penalty", "logprobs",
        "top_logprobs", "logit_bias", "parallel_tool_calls", "store", "service_tier", "user", "metadata",
        "modalities", "audio", "reasoning_effort", "reasoning", "verbosity", "stop", "echo", "dimensions",
        "encoding_format", "truncation", "background", "include", "previous_response_id", "conversation",
        "max_tool_calls", "tool_choice", "function_call", "prompt_cache_key", "prompt_cache_retention",
        "safety_identifier", "web_search_options",
    }
)  # fmt: skip


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _searches(req: dict[str, Any]) -> bool:
    """OpenRouter searches the web, billed per result, for a request with its `web` plugin or an `:online` model."""
    plugins, model = req.get("plugins"), req.get("model")
    if isinstance(model, str) and ":online" in model.lower():
        return True
    return isinstance(plugins, list) and any(
        isinstance(p, dict) and isinstance(i := p.get("id"), str) and i.strip().lower() == "web" for p in plugins
    )


def _hosted(tools: Any) -> bool:
    """Tools the provider runs and bills per call (web search, file search, code interpreter...)."""
    return isinstance(tools, list) and any(isinstance(t, dict) and t.get("type") not in _FUNCTION_TOOLS for t in tools)


_counters: dict[str, Counter] = {}


def _forget_counters() -> None:
    """Counters made before their encoding was built count with the upper bound: made again on next use."""
    _counters.clear()


encodings.on_built(_forget_counters)


def counter(model: str) -> Counter:
    c = _counters.get(model)
    if c is None:
        c = Counter(model)
        if len(_counters) < 10_000:  # bounded: model names come from clients
            _counters[model] = c
    return c


class Measure:
    """A request body as admission sees it: prompt tokens (an upper bound of what the body holds), the
    number of answers it asks for, and what it may be billed that the body does not show."""

    __slots__ = ("hosted_tools", "images", "n", "predicted", "prompt", "unbounded")

    def __init__(
        self,
        prompt: int,
        n: int = 1,
        unbounded: bool = False,
        hosted_tools: bool = False,
        predicted: int = 0,
        images: int = 0,
    ) -> None:
        self.prompt = prompt
        self.images = images  # input images in ``prompt``, each at its model's image_tokens
        self.n = n
        self.unbounded = unbounded
        self.hosted_tools = hosted_tools
        # Output tokens the request may be billed past its output limit, per answer: a chat prediction's
        # tokens that the answer does not use are billed as completion tokens.
        self.predicted = predicted

    def __iter__(self) -> Any:  # unpacks as (prompt, n)
        return iter((self.prompt, self.n))

    def __getitem__(self, i: int) -> int:
        return (self.prompt, self.n)[i]


def measure(endpoint: str, model: str, body: bytes) -> Measure:
    """The prompt tokens, choices ``n`` and unseen input of a request body (never raises: a body it
    cannot read is counted as one token per byte, the most its text can be)."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Measure(len(body), 1, unbounded=True)
    if not isinstance(req, dict):
        return Measure(len(body))
    n = 1
    for field in ("n", "best_of"):  # best_of: completions generates (and bills) that many
        v = req.get(field)
        if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 128:
            n = max(n, v)
    c = counter(model)
    scan = Scan()
    read = _READ.get(endpoint)
    if read is not None:  # the fields no counter below reads, an OpenAI-compatible server's own among them
        c.rest(req, read, scan)
    if endpoint == "/v1/chat/completions":
        c.chat(req, scan)
        return Measure(scan.tokens, n, scan.unbounded, scan.hosted_tools, scan.predicted, scan.images)
    if endpoint == "/v1/responses":
        c.responses(req, scan)
        return Measure(scan.tokens, 1, scan.unbounded, scan.hosted_tools, images=scan.images)
    if endpoint == "/v1/completions":
        c.prompt(req.get("prompt"), scan)
        c.scan(req.get("suffix"), scan)
        # A list of prompts (strings or token arrays; a flat list of ints is one prompt) gets n completions
        # each: the output reserved is max_tokens x n x prompts.
        return Measure(scan.tokens, n * _prompt_count(req.get("prompt")), scan.unbounded, images=scan.images)
    if endpoint == "/v1/embeddings":
        c.prompt(req.get("input"), scan)
        return Measure(scan.tokens, 1, scan.unbounded, images=scan.images)
    c.scan(req.get("input") or req.get("prompt") or req.get("messages"), scan)
    return Measure(scan.tokens, 1, scan.unbounded, images=scan.images)


def _prompt_count(prompt: Any) -> int:
    """How many prompts /v1/completions' ``prompt`` holds (the provider answers each)."""
    if not isinstance(prompt, list) or not prompt:
        return 1
    if all(isinstance(x, int) and not isinstance(x, bool) for x in prompt):
        return 1  # one prompt given as token ids
    return len(prompt)


def prompt_tokens(endpoint: str, model: str, body: bytes) -> int:
    """The prompt tokens of a request body (0 when it is not a JSON object)."""
    return measure(endpoint, model, body)[0]
