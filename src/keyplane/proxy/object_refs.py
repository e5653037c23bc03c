"""Which provider objects a request names (proxy/tenancy.py checks the caller's project owns each).

- a canonical path under an object collection (``/v1/files/{id}``...): :func:`target`;
- the ids a JSON body refers to (``previous_response_id``, ``input_file_id``, ``vector_store_ids``..., the
  stored items a Responses input references by id, a stored prompt ``{"id": "pmpt_..."}``) and the fine-tuned
  models (``ft:...``) it names anywhere (an eval run's data source, a grader, a batch line...): :func:`body_refs`;
- the files an eval's data sources name: :func:`eval_refs`;
- the ids the requests of a batch input file (JSONL) name: :func:`batch_file_refs`;
- the stored prompts and fine-tuned models a realtime client event names: :func:`event_refs`.

What cannot be read is refused (an APIError), never passed on unchecked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from keyplane import errors, items

# Collections of provider objects -> the noun of OpenAI's "No such <noun> object" message.
COLLECTIONS: Final[dict[str, str]] = {
    "/v1/files": "File",
    "/v1/uploads": "Upload",
    "/v1/batches": "Batch",
    "/v1/vector_stores": "VectorStore",
    "/v1/assistants": "Assistant",
    "/v1/threads": "Thread",
    "/v1/fine_tuning/jobs": "FineTuningJob",
    "/v1/evals": "Eval",
    "/v1/conversations": "Conversation",
    "/v1/responses": "Response",
    "/v1/chat/completions": "ChatCompletion",
    "/v1/containers": "Container",
    "/v1/videos": "Video",
}
# Segments right under a collection that are endpoints, not object ids.
_NOT_IDS: Final = {"/v1/responses": frozenset({"input_tokens", "compact"}), "/v1/threads": frozenset({"runs"})}
# Request-body fields that name a provider object the request would read or use.
REF_FIELDS: Final[dict[str, str]] = {
    "previous_response_id": "Response",
    "conversation": "Conversation",
    "input_file_id": "File",
    "training_file": "File",
    "validation_file": "File",
    "file_id": "File",
    "file_ids": "File",
    "vector_store_ids": "VectorStore",
    "vector_store_id": "VectorStore",
    "assistant_id": "Assistant",
    "container": "Container",  # code_interpreter's container (a string id; {"type": "auto"} names none)
    "approval_request_id": "Item",  # an MCP approval answers an approval request item of a stored response
}
# Items of a Responses input (or of a conversation's items) that the provider reads by id from what is stored
# under its key, every project's: ``{"type": "item_reference", "id": ...}``, an item with an ``id`` and no
# ``type`` (or a null one: the API reads it as a reference), and an item given by its id without its content
# (a reasoning item without its ``encrypted_content``, an image generation call without its ``result``...:
# keyplane/items.py). Reported under this field name (the request's ``input``), with the noun "Item".
ITEM_FIELD: Final = "input"
# A stored prompt (``"prompt": {"id": "pmpt_...", "version": ...}``: Responses, and a batch line's body): made in
# the provider's dashboard, never through keyplane, so owned only once an operator assigns it to a project
# (POST /v1/organization/provider_objects, `keyplane objects assign`). A ``prompt`` that is text (completions,
# images, audio) names nothing.
PROMPT_FIELD: Final = "prompt"
# A fine-tuned model named anywhere in a body (a string value that starts with ``ft:`` under a key naming a model:
# the top-level ``model``, an eval run's ``data_source.model``, a grader's ``model``, a batch line's...): reported
# under this field name; proxy/tenancy.py holds it to the fine-tuned model rule (404 ``model_not_found`` when
# another project's job made it, proxy/owners.py fine_tuned_ids), not to the object rule.
MODEL_FIELD: Final = "model"
FINE_TUNED: Final = "ft:"
# Only under a key that names a model (`model`, `grader_model`, `models`..., any case: a case-insensitive upstream
# reads `MODEL` as `model`): a user's text that happens to start with `ft:` is no model, and costs no lookup.
_MODEL_KEY: Final = "model"
# A previous audio answer of chat completions, given back as ``{"role": "assistant", "audio": {"id": "audio_..."}}``:
# the provider reads the audio and its transcript from what it keeps under its key (proxy/tenancy.py records the
# audio ids of the caller's answers, streamed or not).
AUDIO_FIELD: Final = "audio"
NOUNS: Final[dict[str, str]] = {
    **REF_FIELDS,
    ITEM_FIELD: "Item",
    PROMPT_FIELD: "Prompt",
    MODEL_FIELD: "Model",
    AUDIO_FIELD: "Audio",
}
_ITEM_LISTS: Final = frozenset({"input", "items"})
# A body is parsed when it names a field that refers to an object, an ``id`` (an item reference, a stored
# prompt), a string that starts with ``ft:`` (a fine-tuned model), or has a \u escape (a field name or a value
# can be spelled with escapes: "previous_response\u005fid" is previous_response_id to any JSON parser). The quote
# that starts every field is outside the alternation and the escape looked for apart (:func:`_may_name_refs`): the
# regular expression then starts with one literal byte, which the engine skips to, where the alternation of
# quoted names and ``\u`` was tried at every position (a 16 KB prompt 42 -> 19 us, 15 KB of short messages
# 173 -> 80 us; a batch input file is searched the same way).
_REF_RE: Final = re.compile(rb'"(?:(?:id|' + b"|".join(k.encode() for k in REF_FIELDS) + rb')"\s*:|ft:)')


def _may_name_refs(data: bytes) -> bool:
    """True when ``data`` may name an object (what the comment above lists); False only when it names none."""
    return b"\\u" in data or _REF_RE.search(data) is not None


_MAX_REFS: Final = 1000
_MAX_FILE_REFS: Final = 10_000  # ids the requests of one batch input file may name, all lines together
# Eval data sources that select stored objects by a query rather than by id (eval_refs).
_EVAL_QUERIES: Final = frozenset({"stored_completions", "responses"})


@dataclass(frozen=True, slots=True)
class Target:
    """The collection a path is under and the object id it names (None: the collection itself)."""

    collection: str
    noun: str
    object_id: str | None


def target(path: str) -> Target | None:
    """The object collection (and id) a canonical path is about, or None; the model endpoints and the
    few collection paths every request uses are answered from a small memo."""
    try:
        return _TARGETS[path]
    except KeyError:
        pass
    t = _target(path)
    if (t is None or t.object_id is None) and len(_TARGETS) < 1024:  # ids are many: kept only without one
        _TARGETS[path] = t
    return t


_TARGETS: dict[str, Target | None] = {}


def _target(path: str) -> Target | None:
    for coll, noun in COLLECTIONS.items():
        if path == coll:
            return Target(coll, noun, None)
        if path.startswith(coll) and path[len(coll)] == "/":
            oid = path[len(coll) + 1 :].split("/", 1)[0]
            if oid in _NOT_IDS.get(coll, ()):
                return None
            return Target(coll, noun, oid)
    return None


def body_refs(body: bytes) -> list[tuple[str, str]]:
    """(field, id) for each provider object a JSON body names, and (``model``, name) for each fine-tuned model
    it names (:data:`MODEL_FIELD`); [] when it names none or is not JSON."""
    if not body or body.startswith(b"--"):  # empty, or multipart (uploads): no JSON to name objects in
        return []
    if 0 in body[:4]:
        # UTF-16/32 JSON: some upstream parsers (Python's json) detect and read it; keyplane does not.
        raise errors.invalid_json()
    if not _may_name_refs(body):
        return []
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        # It names an object but does not parse here (NaN, bad escapes...): a more lenient parser
        # upstream might read it, so it is refused rather than passed on unchecked.
        raise errors.invalid_json() from None
    return _walk(obj)


def event_refs(event: dict[str, Any]) -> list[tuple[str, str]]:
    """The stored prompts and fine-tuned models a realtime client event (already parsed: session.update,
    response.create) names, for the ownership check. The items it names are the session's own conversation's,
    not stored objects of the provider's: not reported."""
    return [(k, i) for k, i in _walk(event) if k in (PROMPT_FIELD, MODEL_FIELD)]


def _walk(obj: object) -> list[tuple[str, str]]:
    """(field, id) for each provider object a parsed JSON value names, wherever it stands; (``model``, name)
    for each string value that starts with ``ft:`` under a key naming a model (``model``, ``grader_model``, a
    ``models`` list...), at any depth."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[object, int]] = [(obj, 0)]
    while stack and len(out) <= _MAX_REFS:
        node, depth = stack.pop()
        if depth > 64:  # no id stands this deep in any request schema: refused rather than left unchecked
            raise errors.bad_request("The request body is nested too deeply.", code="invalid_body")
        if isinstance(node, dict):
            if items.by_id(node):  # wherever it stands: a reference reads the item whatever holds it
                out.append((ITEM_FIELD, node["id"]))
            for k, v in node.items():
                if k in REF_FIELDS:
                    out.extend((k, i) for i in _ids(v))
                elif k in _ITEM_LISTS and isinstance(v, list):  # an untyped or bare item with an id: a reference
                    out.extend((ITEM_FIELD, e["id"]) for e in v if isinstance(e, dict) and items.bare(e))
                elif k == PROMPT_FIELD and isinstance(v, dict) and isinstance(v.get("id"), str):
                    out.append((PROMPT_FIELD, v["id"]))  # a stored prompt, wherever it stands
                elif k == AUDIO_FIELD and isinstance(v, dict) and isinstance(v.get("id"), str):
                    out.append((AUDIO_FIELD, v["id"]))  # a previous audio answer, wherever it stands
                if isinstance(v, str):
                    if v.startswith(FINE_TUNED) and _MODEL_KEY in k.lower():
                        out.append((MODEL_FIELD, v))
                # The annotations of an answer replayed as input (file citations) grant nothing; any other
                # place an id can stand is checked, whatever a "type" field says.
                elif k != "annotations" and isinstance(v, (dict, list)):
                    if isinstance(v, list) and _MODEL_KEY in k.lower():  # "models": [...]
                        out.extend((MODEL_FIELD, e) for e in v if isinstance(e, str) and e.startswith(FINE_TUNED))
                    stack.append((v, depth + 1))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    if len(out) > _MAX_REFS:
        raise errors.bad_request(f"The request names more than {_MAX_REFS} provider objects.", code="too_many_ids")
    return out


def _ids(v: object) -> Iterable[str]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list):
        return (x for x in v if isinstance(x, str))
    if isinstance(v, dict) and isinstance(v.get("id"), str):  # conversation: {"id": "conv_..."}
        return (v["id"],)
    return ()


def eval_refs(body: bytes) -> list[tuple[str, str]]:
    """The files an eval call (POST /v1/evals...) names in its data sources as ``{"type": "file_id", "id": ...}``
    (field ``file_id``), for the ownership check. A data source that selects stored chat completions or stored
    responses by a query (``stored_completions``, a ``responses`` source) is refused: the provider would pick them
    among everything stored under its key, every project's. Read once, strictly (a key given twice is refused:
    parsers that keep the first and the last value would read two different sources)."""
    if not body.strip():
        return []
    if 0 in body[:4]:
        raise errors.invalid_json()
    try:
        obj = json.loads(body, object_pairs_hook=_one_of_each)
    except (ValueError, RecursionError):
        raise errors.invalid_json() from None
    out: list[tuple[str, str]] = []
    stack: list[tuple[object, int]] = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > 64:
            raise errors.bad_request("The request body is nested too deeply.", code="invalid_body")
        if isinstance(node, dict):
            src = node.get("source")
            if isinstance(src, dict) and src.get("type") in _EVAL_QUERIES:
                raise errors.access_refused(
                    "An eval may not read stored chat completions or stored responses by query through keyplane: "
                    "the provider would select them among every project's that share its key. Give the items in a "
                    "file your project uploaded (`file_id`) or inline (`file_content`).",
                    "eval_source_not_permitted",
                )
            if node.get("type") == "file_id" and "id" in node:
                fid = node["id"]
                if not isinstance(fid, str):
                    raise errors.invalid_value("id", "A data source's file `id` must be a string.")
                out.append(("file_id", fid))
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
        if len(out) > _MAX_REFS:
            raise errors.bad_request(f"The request names more than {_MAX_REFS} provider objects.", code="too_many_ids")
    return out


def _one_of_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise errors.bad_request(
                f"The request body gives the key '{k[:40]}' twice in one object.", param=k[:40], code="duplicate_key"
            )
        out[k] = v
    return out


def batch_file_refs(content: bytes) -> list[tuple[int, str, str]]:
    """(line, field, id) for each provider object (and fine-tuned model, field ``model``) the requests of a batch
    input file (JSONL) name: the provider runs them under the same key as any request, so they are held to the
    same ownership check. Read line by line at every LF (a CR is JSON whitespace to a parser that splits at LF
    only, so it never hides a key from this reading); a line that names an object and does not parse, or a file
    that is not UTF-8 text, is an APIError (refused rather than passed on unchecked)."""
    if b"\x00" in content:
        raise errors.bad_request("A batch input file must be UTF-8 JSONL text.", code="invalid_body")
    if not _may_name_refs(content):
        return []
    out: list[tuple[int, str, str]] = []
    for n, line in enumerate(content.split(b"\n"), 1):
        if not _may_name_refs(line):
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise errors.bad_request(
                f"Line {n} of the batch input file names a provider object and is not one JSON "
                "object keyplane can read.",
                code="invalid_body",
            ) from None
        out.extend((n, k, i) for k, i in _walk(obj))
        if len(out) > _MAX_FILE_REFS:
            raise errors.bad_request(
                f"The batch input file names more than {_MAX_FILE_REFS} provider objects.", code="too_many_ids"
            )
    return out
