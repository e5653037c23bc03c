"""The duplicate-key check of JSON bodies (proxy/request.check_one_reading): its fast path
(``_plainly_one_reading``, orjson) must give exactly the verdicts of the exact reading (json.loads with an
object_pairs_hook) on every body: accepted, refused as a repeated key (the same key named), or refused as
not JSON (strict) / passed (not strict). Strict, a body orjson cannot read (admission's reader) is refused as
not JSON too."""

from __future__ import annotations

import json
import random
import re
import sys

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane import errors
from keyplane.proxy import request


def _exact(body: bytes, strict: bool) -> tuple[str, str | None]:
    """The verdict of the exact reading alone (what check_one_reading gave before its fast path)."""
    try:
        json.loads(body, object_pairs_hook=request._unique)
    except request._Repeated as e:
        try:
            request._refuse(e.key, e.other)
        except errors.APIError as err:
            return f"{err.status} {err.code}", err.message
    except (ValueError, RecursionError):
        if not strict:
            return "ok", None
        err = errors.invalid_json()
        return f"{err.status} {err.code}", err.message
    if strict:  # a spending body admission's orjson cannot read is refused too (quoted blind otherwise)
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            err = errors.invalid_json()
            return f"{err.status} {err.code}", err.message
    return "ok", None


def _verdict(body: bytes, strict: bool) -> tuple[str, str | None]:
    try:
        request.check_one_reading(body, strict)
    except errors.APIError as e:
        return f"{e.status} {e.code}", e.message
    return "ok", None


def _same(body: bytes) -> None:
    for strict in (True, False):
        assert _verdict(body, strict) == _exact(body, strict), (body[:200], strict)


ACCEPTED = [
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":32}',
    b'{"a":"x:y","b":{"c:d":["e:f",{"g":"h"}]},"i":[{"a":1},{"a":2}]}',  # colons in strings, same key in siblings
    b' {"a" : [ 1 , 2.5e3 , -0 , true , false , null ] } \r\n\t',
    b'{"a":"\\n\\t\\"\\\\\\/\\b\\f\\r"}',
    b'{"\\"a":1,"a":2}',
    b'{"a":18446744073709551616,"b":-9223372036854775809,"c":1e300}',
    '{"caf\u00e9":1,"\u00c9t\u00e9":2,"\u03c3":3,"stra\u00dfe":4}'.encode(),
    '{"content":"\u4f60\u597d:\U0001f600","x":"\u00df"}'.encode(),
    b"[]",
    b"{}",
    b'"just a string"',
    b"12",
    b"null",
    b'[{"a":1,"A ":2}]',
    b'{"":1," ":2}',
]

REFUSED = [
    b'{"max_tokens":100000,"max_tokens":5}',  # repeated at the top
    b'{"model":"m","messages":[{"role":"user","content":"a","content":"b"}]}',  # repeated deep down
    b'{"a":{"b":{"c":{"d":[{"e":1,"e":2}]}}}}',
    b'{"MAX_TOKENS":1,"max_tokens":2}',  # case variants at the top
    b'{"x":[{"Content":"a","content":"b"}]}',  # case variants deep down
    b'{"a":"x:y:z","a":"w"}',  # the dropped value holds colons
    b'{"a":{"k:1":"v:2"},"a":{}}',
    b'{"max\\u005ftokens":1,"max_tokens":2}',  # a key spelled with an escape
    b'{"MAX\\u005fTOKENS":1,"max_tokens":2}',
    b'{"a\\/b":1,"a/b":2}',  # the same key, one escaped
    b'{"\\u00c4":1,"\\u00e4":2}',  # case variants, escaped
    '{"\u00c4":1,"\u00e4":2}'.encode(),  # case variants, not ASCII
    '{"stra\u00dfe":1,"STRASSE":2}'.encode(),  # full case folding (\u00df -> ss)
    '{"\u03a3":1,"\u03c2":2}'.encode(),  # sigma and final sigma fold alike
    b'{"a":1,"b":2,"a":3,"B":4}',  # the first one json.loads meets is named
    b'{"\\u0061":1,"a":2}',
]

NOT_JSON = [
    b"",
    b"not json",
    b'{"a":1,}',
    b'{"a":"\x1f"}',  # a control character in a string
    b'{"a": 01}',
    b'{"a":"\\x"}',
    b"{'a':1}",
    b'{"a":1}\xc2\xa0',
    b'{"a":"\xc0\x80"}',  # invalid UTF-8
    b'{"a":1} {"b":2}',
    b'{"a":TRUE}',  # valid once lower-cased: not before
    b'{"a":"\\N"}',
    b'{"a":"\\U0041"}',
    b"\x00\x00\x00[",
    b'{"a":' + b"9" * 5000 + b"}",  # json.loads refuses an integer this long; orjson reads a float
]

# json.loads reads these and orjson does not: the exact reading decides
ONLY_JSON_LOADS = [
    b'{"a":NaN,"b":Infinity,"c":-Infinity}',
    b'{"a":NaN,"a":1}',
    b'{"a":"\\ud800"}',  # a lone surrogate
    b'{"\\ud800":1,"\\ud800":2}',
    b'{"a":"\xed\xa0\x80"}',  # an encoded surrogate (json.loads decodes with surrogatepass)
    b'\xef\xbb\xbf{"a":1}',  # a UTF-8 BOM
    b'\xef\xbb\xbf{"a":1,"A":2}',
    b'{"a":1e400}',
    '{"a":1}'.encode("utf-16"),
    '{"a":1,"a":2}'.encode("utf-16-le"),
    '{"a":1}'.encode("utf-32"),
]


@pytest.mark.parametrize("body", ACCEPTED + REFUSED + NOT_JSON + ONLY_JSON_LOADS)
def test_same_verdict_as_exact_reading(body: bytes) -> None:
    _same(body)


@pytest.mark.parametrize("body", ACCEPTED)
def test_accepted_bodies_take_the_fast_path(body: bytes) -> None:
    assert request._plainly_one_reading(body)
    request.check_one_reading(body)


@pytest.mark.parametrize("body", REFUSED)
def test_refused(body: bytes) -> None:
    assert not request._plainly_one_reading(body)
    with pytest.raises(errors.APIError) as e:
        request.check_one_reading(body, strict=False)
    assert e.value.code == "duplicate_key"


def test_refusal_names_the_key() -> None:
    with pytest.raises(errors.APIError) as e:
        request.check_one_reading(b'{"model":"m","messages":[{"role":"user","content":"a","content":"b"}]}')
    assert e.value.param == "content"
    with pytest.raises(errors.APIError) as e:
        request.check_one_reading(b'{"max_tokens":1,"MAX_TOKENS":2}')
    assert e.value.param == "MAX_TOKENS" and "'max_tokens'" in e.value.message


@pytest.mark.parametrize("depth", [10, 200, 500, 1023, 1024, 1025, 5000])
def test_deep_nesting(depth: int) -> None:
    for body in (
        b"[" * depth + b"]" * depth,
        b'{"a":' * depth + b"1" + b"}" * depth,
        b'{"a":' * depth + b'{"b":1,"b":2}' + b"}" * depth,
        b'{"a":' * depth + b'{"B":1,"b":2}' + b"}" * depth,
    ):
        _same(body)


def test_many_objects_side_by_side() -> None:
    """A long conversation is wide, not deep: it takes the fast path (no longer the exact reading, at ~3.5 times its
    cost, as soon as it held more objects than a quarter of the recursion limit), and a key it repeats is found."""
    msgs = ",".join('{"role":"user","content":"m%d: hi"}' % i for i in range(2000))
    wide = ('{"model":"m","messages":[%s]}' % msgs).encode()
    _same(wide)
    assert request._plainly_one_reading(wide)
    for repeated in (
        ('{"model":"m","messages":[%s],"model":"n"}' % msgs).encode(),
        ('{"model":"m","messages":[%s,{"role":"user","Role":"x"}]}' % msgs).encode(),
    ):
        _same(repeated)
        assert not request._plainly_one_reading(repeated)


@pytest.mark.parametrize("extra", [-2, -1, 0, 1, 60])
def test_nesting_near_the_limit_with_many_objects(extra: int) -> None:
    """Many objects and one path nested about as deep as the fast path's limit (a quarter of the recursion limit):
    the fast path takes those less deep than the limit, the exact reading decides the others, with one verdict
    (orjson writes no more than 254 levels: deeper still is the exact reading's too)."""
    depth = sys.getrecursionlimit() // 4 + extra
    siblings = ",".join(['{"k":%d}' % i for i in range(300)])
    for inner in ("1", "[]", '{"b":1,"b":2}', '{"B":1,"b":2}'):
        body = ('{"wide":[%s],"deep":' % siblings + '{"a":' * (depth - 1) + inner + "}" * (depth - 1) + "}").encode()
        _same(body)
        if inner == "1":
            assert request._plainly_one_reading(body) is (extra < 0)


def test_random_bodies_agree() -> None:
    """Random JSON objects, some with a repeated or case-varied key at a random depth, escaped keys,
    colons and non-ASCII text: the fast path and the exact reading agree on every one."""
    rng = random.Random(13)
    keys = ["a", "A", "b", "content", "Content", "x:y", "\u00e9", "\u00c9", "\u00df", "SS", "ss", "k\\u0041", "kA"]
    strings = ["", "v", "a:b", ":", "\u4f60:", "\\n", "\\u003a", "\\\\u", "Z\u00df"]

    def value(depth: int) -> str:
        r = rng.random()
        if depth > 4 or r < 0.3:
            return rng.choice(['"%s"' % rng.choice(strings), "1", "-2.5", "true", "null"])
        if r < 0.6:
            return "[" + ",".join(value(depth + 1) for _ in range(rng.randint(0, 3))) + "]"
        names = rng.sample(keys, rng.randint(0, 4))
        if names and rng.random() < 0.3:
            names.append(rng.choice(names))  # a repeat
        return "{" + ",".join('"%s":%s' % (k, value(depth + 1)) for k in names) + "}"

    pad = ",".join(['{"p":%d}' % i for i in range(300)])  # wide enough for the indented copy's depth check
    for i in range(3000):
        v = value(0)
        _same(v.encode())
        if i % 10 == 0:
            _same(('{"pad":[%s],"v":%s}' % (pad, v)).encode())


@pytest.mark.parametrize("body", ONLY_JSON_LOADS)
def test_a_body_only_a_lenient_parser_reads_is_refused_when_strict(body: bytes) -> None:
    """Admission reads a spending body with orjson: one it cannot read (`1e400`, NaN, a lone surrogate...) would be
    quoted blind (its `n`, tools and tier unread), so a model or spending request refuses it (red team round 10)."""
    with pytest.raises(errors.APIError) as e:
        request.check_one_reading(body, strict=True)
    assert e.value.status == 400 and (e.value.code == "duplicate_key" or "could not parse" in e.value.message)
    try:
        request.check_one_reading(body, strict=False)  # not a spending body: passed on, as before ...
    except errors.APIError as e:
        assert e.code == "duplicate_key"  # ... unless it repeats a key


# --- the long-digit-run check (an integer json.loads may refuse): linear, and exactly the regular expression's ---

_DIGIT_RUN_RE = re.compile(rb"[0-9]{%d}" % request.LONG_DIGITS)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, request.LONG_DIGITS + 5), st.binary(min_size=1, max_size=8)),
        max_size=6,
    )
)
def test_the_digit_run_check_finds_what_the_regular_expression_finds(parts: list[tuple[int, bytes]]) -> None:
    """Runs of digits up to and past the threshold, between arbitrary bytes (digits among them, non-ASCII digits
    such as Arabic-Indic ones in UTF-8, which [0-9] does not match)."""
    body = b"".join(b"7" * n + sep for n, sep in parts)
    assert request.has_long_digit_run(body) == (_DIGIT_RUN_RE.search(body) is not None)


@pytest.mark.parametrize(
    ("body", "found"),
    [
        (b"1" * 640, True),
        (b"1" * 639, False),
        (b"x" + b"0123456789" * 64 + b"x", True),
        ((b"9" * 639 + b",") * 2000, False),  # many runs one short of it (the regular expression's worst case)
        ((b"9" * 639 + b",") * 20 + b"5" * 640, True),
        ("٣".encode() * 700, False),  # not an ASCII digit
        (b"1" * 320 + b"/" + b"1" * 320, False),  # the bytes on either side of 0-9 break a run
        (b"1" * 320 + b":" + b"1" * 320, False),
        (b"1" * 320 + b"\x00" + b"1" * 320, False),
        (b"", False),
    ],
)
def test_the_digit_run_check_at_its_threshold(body: bytes, found: bool) -> None:
    assert request.has_long_digit_run(body) is found
