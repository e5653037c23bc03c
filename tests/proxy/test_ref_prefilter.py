"""The prefilter that spares parsing a body (or a batch input file's line) naming no object (proxy/object_refs.py
``_may_name_refs``): it says "may name one" exactly where the single regular expression it replaced matched (the
fields that refer to objects, ``id``, a ``ft:`` model, any ``\\u`` escape), so that no reference is ever left
unchecked, and body_refs still finds the references behind each."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.proxy import object_refs
from keyplane.proxy.object_refs import REF_FIELDS, _may_name_refs, body_refs

# The expression before: one alternation, the quote inside each branch and the escape among them.
BEFORE = re.compile(rb'"(?:id|' + b"|".join(k.encode() for k in REF_FIELDS) + rb')"\s*:|"ft:|\\u')

PIECES = [
    *(f'"{k}"'.encode() for k in ("id", *REF_FIELDS)),
    *(k.encode() for k in ("id", *REF_FIELDS)),
    b'"',
    b":",
    b" ",
    b"\t",
    b"\n",
    b"\\",
    b"u",
    b"\\u",
    b"ft:",
    b'"ft',
    b"{",
    b"}",
    b",",
    b"x",
    b'"file_',
    b'_id"',
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12))
def test_it_says_may_name_where_the_expression_it_replaced_matched(parts: list[bytes]) -> None:
    data = b"".join(parts)
    assert _may_name_refs(data) == (BEFORE.search(data) is not None)


@pytest.mark.parametrize(
    ("body", "refs"),
    [
        (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}', []),
        (b'{"previous_response_id" :\n "resp_1"}', [("previous_response_id", "resp_1")]),
        (b'{"previous_response\\u005fid":"resp_2"}', [("previous_response_id", "resp_2")]),
        (b'{"model":"ft:gpt-4o-mini:org:x:1"}', [("model", "ft:gpt-4o-mini:org:x:1")]),
        (b'{"input":[{"type":"input_file","file_id":"file-9"}]}', [("file_id", "file-9")]),
        (b'{"content":"the word \\"id\\" in a string"}', []),
    ],
)
def test_body_refs_behind_it(body: bytes, refs: list[tuple[str, str]]) -> None:
    assert sorted(body_refs(body)) == sorted(refs)


def test_its_expression_starts_with_the_quote() -> None:
    """The point of the split: a pattern led by one literal byte (the engine skips to it)."""
    assert object_refs._REF_RE.pattern.startswith(b'"(?:')
    assert b"\\\\u" not in object_refs._REF_RE.pattern
