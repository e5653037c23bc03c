"""The matcher on raw bytes: binary data, minified lines, CRLF, columns, inline allows, and the
two prefilters giving the same answers."""

from __future__ import annotations

import os
import random

import pytest

from keyplane import keys
from keyplane.scan.engine import WINDOW, PythonPrefilter, Scanner, hyperscan_available
from tests.scan.helpers import SAMPLES, generic_value, openai_legacy, rnd, sample_line

ENGINES = ["python", pytest.param("hyperscan", marks=pytest.mark.skipif(not hyperscan_available(), reason="no wheel"))]


@pytest.fixture(scope="module", params=ENGINES)
def scanner(request: pytest.FixtureRequest) -> Scanner:
    return Scanner(engine=request.param)


def test_engine_names() -> None:
    assert Scanner(engine="python").engine == "python"
    assert isinstance(Scanner(engine="python")._prefilter, PythonPrefilter)


def test_empty_and_clean_input(scanner: Scanner) -> None:
    assert scanner.scan(b"") == []
    assert scanner.scan(b"nothing to see here\n" * 1000) == []


def test_binary_file(scanner: Scanner) -> None:
    key = keys.generate("proj")
    data = os.urandom(5000).replace(b"sk-", b"xx-") + b"\0\0" + key.encode() + b"\0\xff" + os.urandom(5000)
    assert [m.secret.decode() for m in scanner.scan(data) if m.rule.id == "keyplane-key"] == [key]


def test_minified_line(scanner: Scanner) -> None:
    key, other = keys.generate("svc"), openai_legacy()
    filler = "var a=function(b){return b*2};" * 20000  # 600 kB, no newline
    text = f"{filler}const k='{key}';{filler}{'x' * WINDOW * 3}const o=\"{other}\";{filler}"
    matches = scanner.scan(text.encode())
    assert [(m.rule.id, m.secret.decode(), m.line) for m in matches] == [
        ("keyplane-key", key, 1),
        ("openai-legacy-key", other, 1),
    ]
    assert matches[0].column == text.index(key) + 1


def test_crlf_lines_and_columns(scanner: Scanner) -> None:
    key = keys.generate("admin")
    secret = generic_value()
    text = f"a=1\r\nb=2\r\n  KEY={key}\r\nPASSWORD={secret}\r\n"
    matches = scanner.scan(text.encode())
    assert [(m.rule.id, m.line, m.column, m.secret.decode()) for m in matches] == [
        ("keyplane-key", 3, 7, key),
        ("generic-secret-assignment", 4, 10, secret),
    ]


def test_columns_count_characters_not_bytes(scanner: Scanner) -> None:
    key = keys.generate("proj")
    matches = scanner.scan(f"# clé: «{key}»\n".encode())
    assert matches[0].column == 9


def test_inline_allow_marker(scanner: Scanner) -> None:
    a, b = keys.generate("proj"), keys.generate("proj")
    text = f"x = '{a}'  # keyplane:allow (test fixture)\ny = '{b}'\n"
    assert [(m.secret.decode(), m.allowed) for m in scanner.scan(text.encode())] == [(a, True), (b, False)]


def test_keys_at_both_ends_of_the_buffer(scanner: Scanner) -> None:
    a, b = keys.generate("proj"), keys.generate("svc")
    assert [m.secret.decode() for m in scanner.scan(f"{a} {b}".encode())] == [a, b]


def test_two_keys_on_one_line_and_adjacent_lines(scanner: Scanner) -> None:
    ks = [keys.generate("proj") for _ in range(4)]
    text = f"{ks[0]},{ks[1]}\n{ks[2]}\n{ks[3]}"
    assert [(m.secret.decode(), m.line) for m in scanner.scan(text.encode())] == [
        (ks[0], 1),
        (ks[1], 1),
        (ks[2], 2),
        (ks[3], 3),
    ]


@pytest.mark.skipif(not hyperscan_available(), reason="no hyperscan wheel")
def test_prefilters_agree_on_a_mixed_corpus() -> None:
    rng = random.Random(7)
    parts = []
    for i in range(400):
        rule_id = rng.choice([*SAMPLES, "generic-secret-assignment", "private-key", "aws-secret-access-key"])
        line, _ = sample_line(rule_id)
        noise = rnd(rng.randint(0, 200), "abcdefghij klmnop=:_-\"'\t")
        parts.append(f"{noise}\n{line}" if i % 3 else f"{noise} {line} {noise}")
    data = "\r\n".join(parts).encode()
    python, hyper = Scanner(engine="python"), Scanner(engine="hyperscan")
    as_tuples = lambda ms: [(m.rule.id, m.start, m.end, m.line, m.column, m.allowed) for m in ms]  # noqa: E731
    assert as_tuples(python.scan(data)) == as_tuples(hyper.scan(data))
    assert len(python.scan(data)) >= 300  # most planted lines (noise may glue onto a few)


def test_auto_engine_prefers_hyperscan_when_installed() -> None:
    assert Scanner(engine="auto").engine == ("hyperscan" if hyperscan_available() else "python")


def test_no_rules_is_an_error() -> None:
    with pytest.raises(ValueError):
        Scanner(rules=())
