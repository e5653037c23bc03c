"""Detection rules: what a leaked credential looks like.

Each rule is a regular expression over bytes plus the anchors that must occur for it to match
(the engine's cheap prefilter looks for anchors first and runs the rules only around them).
An anchor is a short regex that starts with a literal (so that both CPython's ``re`` prefix
search and hyperscan find it fast). A caseless rule (``caseless=True``) is written in lower case,
anchors and pattern alike, and runs on the lower-cased text; its secret is taken from the original
bytes at the same offsets (lower-casing bytes keeps every offset).

A rule whose secret is only part of its match (``NAME = "value"``) captures it in a group named
``secret``, inside a lookahead, so the match consumes the name alone and the value is still
seen by the provider-specific rules: the most specific rule wins where spans overlap.

Confidence: ``high`` for formats that identify the issuer (prefixes, checksums, markers),
``medium`` for plausible variants, ``low`` for the entropy-based generic rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from keyplane import keys
from keyplane.scan.generic import (
    GENERIC_MIN_ENTROPY,
    GENERIC_MIN_LENGTH,
    generic_secret_plausible,
    shannon_entropy,
)

Confidence = Literal["high", "medium", "low"]
CONFIDENCES: Final[tuple[Confidence, ...]] = ("low", "medium", "high")

OPENAI_ADVICE: Final = (
    "An OpenAI key: rotate it at the provider (platform.openai.com, API keys), then remove it "
    "from the repository and its history."
)
KEYPLANE_ADVICE: Final = (
    "A keyplane key: check and revoke it with `keyplane scan --verify --revoke`, then remove it "
    "from the repository and its history."
)
ROTATE_ADVICE: Final = "Rotate it at its issuer, then remove it from the repository and its history."


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    description: str
    confidence: Confidence
    pattern: str
    anchors: tuple[str, ...]
    caseless: bool = False
    # Look beyond the anchor's line (a private key's body follows its header line).
    multiline: bool = False
    validate: Callable[[bytes], bool] | None = None
    # A keyplane key: the gateway can say whether it is live (by its SHA-256).
    verifiable: bool = False
    advice: str = ROTATE_ADVICE


def _valid_keyplane(secret: bytes) -> bool:
    return keys.parse(secret.decode("ascii")) is not None


def _min_entropy(bits: float) -> Callable[[bytes], bool]:
    """Refuses placeholders such as ``AKIAXXXXXXXXXXXXXXXX`` or ``xoxb-000...``."""

    def check(secret: bytes) -> bool:
        return shannon_entropy(secret) >= bits

    return check


def _aws_key_id(secret: bytes) -> bool:
    # AWS documents AKIAIOSFODNN7EXAMPLE; such examples are everywhere and are not keys.
    return not secret.endswith(b"EXAMPLE") and shannon_entropy(secret) >= 3.0


def _private_key(match: bytes) -> bool:
    # A header alone is code that handles PEM; a leaked key has its body right after the header.
    body = match.rsplit(b"-----", 1)[-1].replace(b"\\n", b"").strip()
    return len(body) >= 32


# Boundaries: a token must not be a slice of a longer token.
_L = r"(?<![A-Za-z0-9_-])"
_R = r"(?![A-Za-z0-9_-])"
_LA = r"(?<![A-Za-z0-9])"
_RA = r"(?![A-Za-z0-9])"
_B64U = "[A-Za-z0-9_-]"

_GENERIC_NAMES: Final = (
    r"api[_.-]?key|apikey|secret|token|passw(?:or)?d|passwd|pwd|auth[_.-]?key|access[_.-]?key"
    r"|private[_.-]?key|signing[_.-]?key|encryption[_.-]?key"
)
# NAME ["']] = ["'] VALUE, as in .env, YAML, JSON, TOML, Python, JS, shell; Python annotations too.
# A colon assigns when a blank or a quote follows it (YAML, JSON, annotations), not inside a word
# such as ``secrets/password.env:rule:hash``.
_ASSIGN: Final = (
    r"""[a-z0-9_.-]{0,40}["'\]]{0,2}[ \t]{0,8}"""
    r"""(?:=>|:=|==|!=|=|:(?=[ \t"'`])(?:[ \t]{0,8}[a-z_][\w.\[\]| ]{0,40}?[ \t]{0,8}=)?)"""
    r"""[ \t]{0,8}(?:[bru]{0,2}(?P<q>["'`]))?"""
)
# A quoted value ends at its closing quote; an unquoted one (.env, YAML) at the end of the line
# or a comment, so that code such as ``token = make_token(user)`` is not a value.
_VALUE_END: Final = r"""(?(q)(?P=q)|[ \t]*(?:\#[^\n]*)?\r?(?:\n|\Z))"""


def _generic() -> str:
    # A quoted value is anything up to its closing quote but blanks and quotes. An unquoted one
    # (.env, YAML) is also code's right-hand side (``x: a?.b``, ``t == p.token0:``), so it takes
    # only the punctuation that code expressions do not end or chain with.
    value = r"""(?(q)[^\s"'`]|[A-Za-z0-9+/=_.~!@#$%%^&*-]){%d,256}""" % GENERIC_MIN_LENGTH
    return r"""(?:%s)%s(?=(?P<secret>%s)%s)""" % (_GENERIC_NAMES, _ASSIGN, value, _VALUE_END)


def _aws_secret() -> str:
    name = r"(?:aws[a-z0-9_.-]{0,20}secret|secret[_.-]?access[_.-]?key)"
    return name + _ASSIGN + r"""(?=(?P<secret>[A-Za-z0-9/+]{40})%s)""" % _VALUE_END


RULES: Final[tuple[Rule, ...]] = (
    Rule(
        "keyplane-key",
        "keyplane API key (checksum-validated)",
        "high",
        keys.KEY_PATTERN.pattern,
        ("sk-",),
        validate=_valid_keyplane,
        verifiable=True,
        advice=KEYPLANE_ADVICE,
    ),
    Rule(
        "openai-project-key",
        "OpenAI project API key (sk-proj-, 164 chars)",
        "high",
        _L + r"sk-proj-" + _B64U + "{74}T3BlbkFJ" + _B64U + "{74}" + _R,
        ("sk-",),
        advice=OPENAI_ADVICE,
    ),
    Rule(
        "openai-service-account-key",
        "OpenAI service-account key (sk-svcacct-, 167 chars)",
        "high",
        _L + r"sk-svcacct-" + _B64U + "{74}T3BlbkFJ" + _B64U + "{74}" + _R,
        ("sk-",),
        advice=OPENAI_ADVICE,
    ),
    Rule(
        "openai-admin-key",
        "OpenAI admin key (sk-admin-, 133 chars)",
        "high",
        _L + r"sk-admin-" + _B64U + "{58}T3BlbkFJ" + _B64U + "{58}" + _R,
        ("sk-",),
        advice=OPENAI_ADVICE,
    ),
    Rule(
        "openai-legacy-key",
        "OpenAI legacy user key (sk-, 51 chars)",
        "high",
        _LA + r"sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}" + _RA,
        ("sk-",),
        advice=OPENAI_ADVICE,
    ),
    Rule(
        "openai-key",
        "OpenAI key of another length or prefix (T3BlbkFJ marker)",
        "medium",
        _L + r"sk-" + _B64U + "{1,120}?T3BlbkFJ" + _B64U + "{8,160}" + _R,
        ("sk-",),
        advice=OPENAI_ADVICE,
    ),
    Rule(
        "anthropic-api-key",
        "Anthropic API or admin key (sk-ant-)",
        "high",
        _L + r"sk-ant-(?:api|admin)[0-9]{2}-" + _B64U + "{93}AA" + _R,
        ("sk-",),
    ),
    Rule(
        "openrouter-api-key",
        "OpenRouter API key (sk-or-v1-)",
        "high",
        _L + r"sk-or-v1-[0-9a-f]{64}" + _RA,
        ("sk-",),
    ),
    Rule(
        "google-api-key",
        "Google API key, as Google AI Studio (Gemini) issues (AIza)",
        "high",
        _LA + r"AIza[0-9A-Za-z_-]{35}" + _R,
        ("AIza",),
    ),
    Rule(
        "google-oauth-client-secret",
        "Google OAuth client secret (GOCSPX-)",
        "high",
        _LA + r"GOCSPX-[0-9A-Za-z_-]{28}" + _R,
        ("GOCSPX-",),
    ),
    Rule(
        "aws-access-key-id",
        "AWS access key ID (AKIA, ASIA)",
        "high",
        _LA + r"(?:AKIA|ASIA)[A-Z2-7]{16}" + _RA,
        ("AKIA", "ASIA"),
        validate=_aws_key_id,
    ),
    Rule(
        "aws-secret-access-key",
        "AWS secret access key assigned to an AWS secret name",
        "high",
        _aws_secret(),
        ("secret",),
        caseless=True,
        validate=_min_entropy(3.5),
    ),
    Rule(
        "github-token",
        "GitHub token (ghp_, gho_, ghu_, ghs_, ghr_)",
        "high",
        _LA + r"gh[pousr]_[A-Za-z0-9]{36}" + _RA,
        (r"gh[pousr]_",),
        validate=_min_entropy(3.0),
    ),
    Rule(
        "github-fine-grained-pat",
        "GitHub fine-grained personal access token (github_pat_)",
        "high",
        _LA + r"github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}" + _RA,
        ("github_pat_",),
    ),
    Rule(
        "gitlab-pat",
        "GitLab personal access token (glpat-)",
        "high",
        _LA + r"glpat-[0-9A-Za-z_-]{20}" + _R,
        ("glpat-",),
        validate=_min_entropy(3.0),
    ),
    Rule(
        "slack-token",
        "Slack bot, user or legacy token (xoxb-, xoxp-, ...)",
        "high",
        _LA + r"xox[abeoprs]-[0-9]{8,14}-[0-9A-Za-z-]{10,250}",
        (r"xox[abeoprs]-",),
        validate=_min_entropy(3.0),
    ),
    Rule(
        "slack-app-token",
        "Slack app-level token (xapp-)",
        "high",
        _LA + r"xapp-[0-9]-[A-Z0-9]{8,12}-[0-9]{10,14}-[a-z0-9]{32,80}" + _RA,
        ("xapp-",),
    ),
    Rule(
        "slack-webhook-url",
        "Slack incoming-webhook URL",
        "high",
        r"hooks\.slack\.com/services/T[A-Z0-9]{6,12}/B[A-Z0-9]{6,12}/(?P<secret>[A-Za-z0-9]{24})" + _RA,
        (r"hooks\.slack\.com/",),
        validate=_min_entropy(3.0),
    ),
    Rule(
        "stripe-live-key",
        "Stripe live secret or restricted key (sk_live_, rk_live_)",
        "high",
        _LA + r"[sr]k_live_[0-9A-Za-z]{24,247}" + _RA,
        (r"k_(?:live|test)_",),
        validate=_min_entropy(3.0),
    ),
    Rule(
        "stripe-test-key",
        "Stripe test-mode secret or restricted key (sk_test_, rk_test_)",
        "medium",
        _LA + r"[sr]k_test_[0-9A-Za-z]{24,247}" + _RA,
        (r"k_(?:live|test)_",),
        validate=_min_entropy(3.0),
    ),
    Rule(
        "sendgrid-api-key",
        "SendGrid API key (SG.)",
        "high",
        _LA + r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}" + _R,
        (r"SG\.",),
    ),
    Rule(
        "huggingface-token",
        "Hugging Face access token (hf_)",
        "high",
        _LA + r"hf_[A-Za-z]{34}" + _RA,
        ("hf_",),
        validate=_min_entropy(3.5),
    ),
    Rule(
        "groq-api-key",
        "Groq API key (gsk_)",
        "high",
        _LA + r"gsk_[A-Za-z0-9]{52}" + _RA,
        ("gsk_",),
    ),
    Rule(
        "xai-api-key",
        "xAI API key (xai-)",
        "high",
        _LA + r"xai-[A-Za-z0-9]{80}" + _RA,
        ("xai-",),
    ),
    Rule(
        "replicate-api-token",
        "Replicate API token (r8_)",
        "high",
        _LA + r"r8_[A-Za-z0-9]{37}" + _RA,
        ("r8_",),
    ),
    Rule(
        "perplexity-api-key",
        "Perplexity API key (pplx-)",
        "high",
        _LA + r"pplx-[A-Za-z0-9]{48}" + _RA,
        ("pplx-",),
    ),
    Rule(
        "npm-token",
        "npm access token (npm_)",
        "high",
        _LA + r"npm_[A-Za-z0-9]{36}" + _RA,
        ("npm_",),
        validate=_min_entropy(3.0),
    ),
    Rule(
        "pypi-token",
        "PyPI API token (pypi-)",
        "high",
        r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}",
        ("pypi-AgEIcHlwaS5vcmc",),
    ),
    Rule(
        "private-key",
        "PEM private key (header followed by its body)",
        "high",
        r"-----BEGIN[ A-Z0-9]{0,24} PRIVATE KEY(?: BLOCK)?-----(?:\r?\n|\\n)?[A-Za-z0-9+/=]{0,64}",
        ("PRIVATE KEY",),
        multiline=True,
        validate=_private_key,
    ),
    Rule(
        "generic-secret-assignment",
        "High-entropy value (>= %d chars, >= %.1f bits/char) assigned to a key, secret, token or "
        "password name" % (GENERIC_MIN_LENGTH, GENERIC_MIN_ENTROPY),
        "low",
        _generic(),
        ("secret", "token", "passw", "pwd", "key"),
        caseless=True,
        validate=generic_secret_plausible,
    ),
)

RULES_BY_ID: Final = {rule.id: rule for rule in RULES}


def confidence_rank(confidence: Confidence) -> int:
    return CONFIDENCES.index(confidence)


def select(min_confidence: Confidence = "low") -> tuple[Rule, ...]:
    """The rules at or above ``min_confidence``, in priority order."""
    floor = confidence_rank(min_confidence)
    return tuple(rule for rule in RULES if confidence_rank(rule.confidence) >= floor)
