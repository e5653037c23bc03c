"""Every rule finds what it is for, and nothing in a corpus of look-alikes."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import uuid
from pathlib import Path

import pytest

from keyplane import keys
from keyplane.scan.engine import Scanner
from keyplane.scan.findings import redact
from keyplane.scan.rules import RULES, RULES_BY_ID, generic_secret_plausible, select, shannon_entropy
from tests.scan.helpers import B62, SAMPLES, generic_value, near_miss_keyplane, openai_project, rnd, sample_line

DOCS = Path(__file__).parents[2] / "docs" / "scan.md"


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(engine="python")


def found(scanner: Scanner, text: str | bytes) -> list[tuple[str, str]]:
    data = text.encode() if isinstance(text, str) else text
    return [(m.rule.id, m.secret.decode()) for m in scanner.scan(data)]


@pytest.mark.parametrize("rule_id", [rule.id for rule in RULES])
def test_each_rule_finds_its_credential(scanner: Scanner, rule_id: str) -> None:
    for _ in range(5):  # several random draws: no lucky pass
        line, secret = sample_line(rule_id)
        assert found(scanner, f"# config\n{line}\nother = 1\n") == [(rule_id, secret)]


def test_every_rule_has_a_sample_or_a_special_case() -> None:
    special = {"aws-secret-access-key", "slack-webhook-url", "private-key", "generic-secret-assignment"}
    assert {r.id for r in RULES} == set(SAMPLES) | special


def test_rule_ids_are_unique_and_confidences_known() -> None:
    assert len(RULES_BY_ID) == len(RULES)
    assert {r.confidence for r in RULES} <= {"high", "medium", "low"}


def test_keyplane_keys_of_every_kind_and_near_misses(scanner: Scanner) -> None:
    for kind in keys.KINDS:
        key = keys.generate(kind)
        assert found(scanner, f"K={key}") == [("keyplane-key", key)]
    assert found(scanner, f"K={near_miss_keyplane()}") == []


def test_openai_exact_formats_win_over_the_marker_rule(scanner: Scanner) -> None:
    key = openai_project()
    assert len(key) == 164
    assert found(scanner, f"OPENAI_API_KEY={key}") == [("openai-project-key", key)]
    # One character short: not the documented format, but the marker still gives it away.
    short = key[:100] + key[101:]
    assert found(scanner, f"OPENAI_API_KEY={short}") == [("openai-key", short)]
    for rule_id, length in (("openai-service-account-key", 167), ("openai-admin-key", 133), ("openai-legacy-key", 51)):
        assert len(SAMPLES[rule_id]()) == length


def test_provider_rule_wins_over_the_generic_one(scanner: Scanner) -> None:
    key = SAMPLES["anthropic-api-key"]()
    assert found(scanner, f'ANTHROPIC_API_KEY="{key}"') == [("anthropic-api-key", key)]
    secret = rnd(40, B62 + "+/")
    assert found(scanner, f"aws_secret_access_key: {secret}") == [("aws-secret-access-key", secret)]


def test_generic_rule_forms(scanner: Scanner) -> None:
    v = generic_value()
    for text in (
        f'API_KEY = "{v}"',
        f"api_key: '{v}'",
        f'{{"client_secret": "{v}"}}',
        f"export AUTH_TOKEN={v}",
        f"DB_PASSWORD={v}  # prod",
        f'self.api_key: str = "{v}"',
        f'config["secret_key"] = b"{v}"',
        f"password: {v}\r",
    ):
        assert found(scanner, text) == [("generic-secret-assignment", v)], text


def test_generic_rule_ignores_code_names_and_placeholders(scanner: Scanner) -> None:
    for text in (
        "token = make_token_for_user_account(user)",
        'API_KEY = os.environ["API_KEY"]',
        'api_key = "your-api-key-here-1234567"',
        'secret_key = "changeme-changeme-1234"',
        "private_key: ed25519.Ed25519PrivateKey",
        ":type tokens: antlr4.BufferedTokenStream.BufferedTokenStream",
        'password = "hunter2"',
        'token_id = "550e8400-e29b-41d4-a716-446655440000"',
        'api_key = "0123456789abcdef"',  # short hex: an id, not a secret
        'secret = "prompt_tokens_details_v2"',
        'secret_prompt = "the-launch-code-is-PLUTO-4417"',  # words joined by dashes
        "max_tokens = 4096",
        f'token = "{"a" * 20}1"',
    ):
        assert found(scanner, text) == [], text


def test_entropy_gate() -> None:
    assert shannon_entropy(b"") == 0
    assert shannon_entropy(b"aaaa") == 0
    assert shannon_entropy(b"abcd") == 2
    assert generic_secret_plausible(generic_value().encode())
    assert not generic_secret_plausible(b"the-launch-code-is-PLUTO-4417")
    assert not generic_secret_plausible(b"Aa1" * 8)
    assert not generic_secret_plausible(b"short1")


def test_look_alike_corpus_has_no_finding(scanner: Scanner) -> None:
    lines = []
    for _ in range(50):
        lines += [
            str(uuid.uuid4()),
            hashlib.sha1(os.urandom(8)).hexdigest(),
            hashlib.sha256(os.urandom(8)).hexdigest(),
            f"commit {hashlib.sha1(os.urandom(8)).hexdigest()}",
            base64.b64encode(os.urandom(300)).decode(),
            base64.urlsafe_b64encode(os.urandom(120)).decode(),
            near_miss_keyplane(),
            f"key: {near_miss_keyplane()}",
            "sk-kp-user-" + rnd(39),  # unknown kind
            keys.generate("proj")[:-3],  # truncated
            "sk-proj-" + rnd(156),  # no marker
            "sk-" + rnd(48),  # legacy length, no marker
            "AKIA" + rnd(16).lower(),
            "AKIAIOSFODNN7EXAMPLE",  # AWS's documentation example
            "AKIA" + "X" * 16,
            "ghp_" + rnd(35),
            "xoxb-" + "0" * 12 + "-" + "0" * 12 + "-" + "x" * 24,
            "-----BEGIN PRIVATE KEY-----",  # header alone: code handling PEM
            f"sha256:{hashlib.sha256(os.urandom(8)).hexdigest()}",
        ]
    assert found(scanner, "\n".join(lines)) == []


def test_redaction_never_shows_much() -> None:
    key = keys.generate("svc")
    assert redact(key) == f"sk-kp-svc-...{key[-4:]}"
    openai = openai_project()
    assert redact(openai) == openai[:8] + "..." + openai[-4:]
    assert redact("abcdefghijklmnop") == "abcd...op"
    assert redact("abc") == "..."
    assert redact("-----BEGIN RSA PRIVATE KEY-----\nMIIE") == "-----BEG...MIIE"
    for rule_id in SAMPLES:
        secret = SAMPLES[rule_id]()
        shown = redact(secret).replace("...", "")
        if rule_id == "keyplane-key":  # the kind prefix is no secret
            shown = shown.split("-", 3)[3]
        assert len(shown) <= min(12, len(secret) // 2), rule_id


def test_min_confidence_selects_rules() -> None:
    assert select("low") == RULES
    assert all(r.confidence == "high" for r in select("high"))
    assert {r.confidence for r in select("medium")} == {"high", "medium"}


def test_every_rule_is_documented_with_its_confidence() -> None:
    text = DOCS.read_text()
    for rule in RULES:
        assert re.search(rf"\| `{re.escape(rule.id)}` \|[^\n]*\| {rule.confidence} \|", text), rule.id
