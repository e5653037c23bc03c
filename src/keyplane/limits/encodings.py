"""The tokenizers' encodings: which one a model uses, and building it from the ``bpe-openai`` wheel.

The ``bpe-openai`` package ships the o200k_base and cl100k_base rank files inside its wheel: they are
handed to ``tiktoken.Encoding`` directly, so nothing is ever downloaded at run time (tiktoken's own loader
would fetch them from the internet). o200k_base serves gpt-4o, gpt-4.1, gpt-5, o1/o3/o4 and the demo
models; cl100k_base the older GPT-4/3.5 and the text-embedding models; any other model has none (limits/
tokens.py counts it one token per UTF-8 byte). o200k_base is built at start-up; another encoding is built
on a thread the first time a model needs it (:func:`get`), and counting uses the upper bound until it is
ready (settle reconciles to the real usage).
"""

from __future__ import annotations

import base64
import gzip
import importlib.util
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("keyplane.limits")

_O200K = (
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "o1",
    "o3",
    "o4",
    "chatgpt-4o",
    "omni-moderation",
    "codex-",
    "computer-use",
    "demo-",
)
_CL100K = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada")

# The encodings' split patterns and special tokens, as tiktoken and bpe-openai define them.
_SPECS: dict[str, tuple[str, dict[str, int]]] = {
    "o200k_base": (
        "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        {"<|endoftext|>": 199_999, "<|endofprompt|>": 200_018},
    ),
    "cl100k_base": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        {
            "<|endoftext|>": 100_257,
            "<|fim_prefix|>": 100_258,
            "<|fim_middle|>": 100_259,
            "<|fim_suffix|>": 100_260,
            "<|endofprompt|>": 100_276,
        },
    ),
}
# name -> tiktoken Encoding, or None when it could not be built. Process-wide: the tables are large
# and immutable. Written by the loader thread, read by the request path (a dict lookup).
_encodings: dict[str, Any] = {}
_loading: set[str] = set()
_lock = threading.Lock()
_build_lock = threading.Lock()
# Called after each encoding is built (limits/tokens.py forgets the counters that used the estimate).
_listeners: list[Callable[[], None]] = []


def encoding_name(model: str) -> str | None:
    if model.startswith(_O200K):
        return "o200k_base"
    if model.startswith(_CL100K):
        return "cl100k_base"
    return None


def get(name: str) -> Any:
    """The encoding ``name`` (a tiktoken ``Encoding``), or None while it is not built (its first use starts
    building it on a thread) or when it cannot be."""
    enc = _encodings.get(name)
    if name not in _encodings:
        _load_in_background(name)
    return enc


def on_built(listener: Callable[[], None]) -> None:
    """Call ``listener`` (on the building thread) each time an encoding is built."""
    _listeners.append(listener)


def _built() -> None:
    for listener in _listeners:
        listener()


def _rank_file(name: str) -> Path:
    """The rank file shipped inside the bpe-openai wheel, found without importing the package (its
    native library maps ~70 MB that keyplane does not use)."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bpe-openai package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.tiktoken.gz"


def _build(name: str) -> Any:
    import tiktoken

    pat_str, special = _SPECS[name]
    ranks: dict[bytes, int] = {}
    with gzip.open(_rank_file(name), "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    enc = tiktoken.Encoding(name=name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=special)
    # The Rust core (CoreBPE) copies the ranks into its own tables when it is built: tiktoken keeps the
    # Python dict only for pickling (``Encoding.__getstate__`` is its one reader in tiktoken 0.14), and
    # keyplane never pickles an encoding. Dropping it frees ~23 MB for o200k_base (200k bytes keys, their
    # ints and the table) and ~11 MB for cl100k_base; the Rust tables (~43 and ~22 MB) are what stays.
    # tests/limits/test_tokens.py pins the counts to an Encoding that keeps its dict (issue 13).
    enc._mergeable_ranks = None  # type: ignore[assignment]
    return enc


def load(names: tuple[str, ...] = ("o200k_base",)) -> None:
    """Build encodings now (about half a second each; call it off the event loop). Each is built once per
    process: a second caller (the feature start after `keyplane serve` built it, a background load)
    waits for the first and finds it there. While one is built its Python ranks and the Rust tables
    coexist (~70 MB for o200k_base, ~45 MB once built): builds never run side by side."""
    for name in names:
        if name in _encodings:
            continue
        with _build_lock:
            if name in _encodings:  # built while this thread waited
                continue
            try:
                enc = _build(name)
            except Exception as e:  # the package or its data missing: fall back to the estimate
                log.warning("tokenizer %s unavailable (%s); estimating 4 bytes per token", name, type(e).__name__)
                enc = None
            _encodings[name] = enc
            _built()


def prebuild(name: str = "o200k_base") -> None:
    """Build ``name`` ahead of the start-up that loads it (keyplane.footprint.prepare), before logging is
    set up: a failure is not recorded, so that :func:`load` meets it again and says why."""
    with _build_lock:
        if name in _encodings:
            return
        try:
            enc = _build(name)
        except Exception:
            return
        _encodings[name] = enc
        _built()


def _load_in_background(name: str) -> None:
    """First use of an encoding that is not loaded: build it on a thread, estimate meanwhile."""
    with _lock:
        if name in _encodings or name in _loading:
            return
        _loading.add(name)

    def run() -> None:
        try:
            load((name,))
        finally:
            _loading.discard(name)

    threading.Thread(target=run, name=f"keyplane-tokenizer-{name}", daemon=True).start()
