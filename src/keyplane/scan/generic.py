"""The generic rule's gate: does a value assigned to a secret-like name look like a real secret?

Random-looking (entropy), and not something that merely sits where a secret would: a name, a path, an
id, a placeholder, a template, a URL, an address, a pattern or a hash. Punctuation is welcome: real
passwords have it; what keeps false positives down is entropy and context, not a character class.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Final


def shannon_entropy(value: bytes) -> float:
    """Bits per character of ``value``'s own character distribution."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


_PLACEHOLDER_WORDS: Final = (
    b"example",
    b"xxxx",
    b"your",
    b"changeme",
    b"change-me",
    b"change_me",
    b"placeholder",
    b"dummy",
    b"redacted",
    b"sample",
    b"fake",
    b"replace",
    b"insert",
    b"todo",
    b"****",
    b"...",
)
# snake_case, kebab-case, dotted.module.paths, CamelCase words: names, not secrets.
_IDENTIFIER: Final = re.compile(
    rb"[a-z][a-z0-9]*(?:[_.\-/][a-z0-9]+)+|[A-Za-z]+|[A-Za-z_][A-Za-z0-9_]{0,40}(?:\.[A-Za-z_][A-Za-z0-9_]{0,40})+"
)
_HEX: Final = re.compile(rb"[0-9a-fA-F]+")
GENERIC_MIN_HEX_LENGTH: Final = 32
_SEPARATORS: Final = re.compile(rb"[-_.:]")
_UUID: Final = re.compile(rb"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
GENERIC_MIN_LENGTH: Final = 16
GENERIC_MIN_ENTROPY: Final = 3.5


# Punctuation a password may carry (beyond the separators - _ . / of names and paths).
_PUNCTUATION: Final = re.compile(rb"""[!"#$%&'()*+,:;<=>?@\[\\\]^`{|}~]""")
# What a value refers to or describes instead of being a secret: interpolations and templates
# (${X}, $X, {{x}}, %(x)s, {x}, %X%), <placeholders>, URLs without a password, e-mail addresses,
# Windows paths, regular expressions, query strings, password hashes (crypt formats).
_NOT_A_SECRET: Final = re.compile(
    rb"""\$\{|\{\{|%\(\w*\)[sd]|\{(?:[a-z_][\w.()\[\]]*)?\}|^\$\w+$|^%\w+%$|^<.*>$|</"""
    rb"""|^[a-z][a-z0-9+.-]*://(?![^/@\s]*:[^/@\s]+@)"""
    rb"""|^[^@\s]+@[a-z0-9-]+(?:\.[a-z0-9-]+)+$|^[a-z]:[\\/]"""
    rb"""|\(\?|\\[dwsbDWSB]|[.\]][*+?]|\]\{\d|[&?][a-z_]\w*="""
    rb"""|^\$(?:2[abxy]?|argon2(?:id|i|d)|[156]|scrypt|pbkdf2[\w-]*)\$|^pbkdf2_\w+\$""",
    re.IGNORECASE,
)


def generic_secret_plausible(value: bytes) -> bool:
    """The entropy and context gate of the generic rule: random-looking, not a name, path, id,
    placeholder, template, URL, address, pattern or hash. Punctuation is welcome: real passwords
    have it; what keeps false positives down is entropy and these shapes, not a character class."""
    if len(value) < GENERIC_MIN_LENGTH:
        return False
    lowered = value.lower()
    if any(word in lowered for word in _PLACEHOLDER_WORDS):
        return False
    if _IDENTIFIER.fullmatch(value) or _UUID.fullmatch(value):
        return False
    if _NOT_A_SECRET.search(value):
        return False
    if not any(48 <= c <= 57 for c in value) and not _PUNCTUATION.search(value):
        return False  # letters and separators alone: a word or a name, not a random token
    if len(value) < GENERIC_MIN_HEX_LENGTH and _HEX.fullmatch(value):  # short hex: ids, hashes
        return False
    segments = _SEPARATORS.split(value)
    if len(segments) >= 3 and sum(s.isalpha() for s in segments) * 4 >= len(segments) * 3:
        return False  # words joined by - _ . : (a phrase, a slug, a qualified name): random tokens rarely split so

    return shannon_entropy(value) >= GENERIC_MIN_ENTROPY
