"""Key format, checksum, digest and redaction.

Format: ``sk-kp-<kind>-<body><check>``. ``kind`` is ``proj`` (a user key in a project),
``svc`` (a service-account key) or ``admin``. ``body`` is 33 base62 characters drawn from
``secrets`` (33 * log2(62) = 196.5 random bits). ``check`` is CRC32 of everything before it,
as 6 base62 characters, so that a look-alike or a typo is refused before any lookup: CRC32
detects every single-byte change, and the fixed-width encoding is one-to-one.

Keys are stored only as ``HMAC-SHA256(server_secret, SHA-256(key))``: a database dump yields no
key, and the leak scanner can ask "is this live?" by sending SHA-256(key) alone.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Callable
from typing import Final, Literal, Protocol

KeyKind = Literal["proj", "svc", "admin"]
KINDS: Final[tuple[KeyKind, ...]] = ("proj", "svc", "admin")

ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LEN: Final = 33
CHECK_LEN: Final = 6
PREFIX: Final = "sk-kp-"

# One pattern for the gateway and the leak scanner alike.
KEY_PATTERN: Final = re.compile(r"sk-kp-(proj|svc|admin)-([0-9A-Za-z]{%d})([0-9A-Za-z]{%d})" % (BODY_LEN, CHECK_LEN))
_FULL: Final = re.compile(r"\A" + KEY_PATTERN.pattern + r"\Z")


def _b62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(reversed(out))


# Every two-digit base62 string, in order: CRC32 (under 62**6) as 6 digits is three lookups, not 6 divmods.
_PAIRS: Final = tuple(a + b for a in ALPHABET for b in ALPHABET)


def checksum(head: str) -> str:
    """Checksum of everything before it (``sk-kp-<kind>-<body>``): ``_b62(crc32, CHECK_LEN)``, by pairs of
    digits (CRC32 < 2**32 < 62**6, so the highest pair is below 62**2)."""
    hi, rest = divmod(zlib.crc32(head.encode("ascii")), 62**4)
    mid, lo = divmod(rest, 62**2)
    return _PAIRS[hi] + _PAIRS[mid] + _PAIRS[lo]


def generate(kind: KeyKind) -> str:
    """A new key value. Shown once; never stored."""
    if kind not in KINDS:
        raise ValueError(f"unknown key kind {kind!r}")
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LEN))
    head = f"{PREFIX}{kind}-{body}"
    return head + checksum(head)


def looks_like_keyplane_key(value: str) -> bool:
    """True when it has keyplane's prefix, whatever follows (for diagnostics)."""
    return value.startswith(PREFIX)


def parse(value: str) -> KeyKind | None:
    """The kind of a well-formed key with a valid checksum, else None. No lookup."""
    m = _FULL.match(value)
    if m is None:
        return None
    head_len = len(value) - CHECK_LEN
    if not hmac.compare_digest(checksum(value[:head_len]), value[head_len:]):
        return None
    return m.group(1)  # type: ignore[return-value]


def is_valid(value: str) -> bool:
    return parse(value) is not None


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def digest_of_sha256(secret: bytes, sha256_hexdigest: str) -> str:
    """The stored digest from SHA-256(key): lets the scanner look a key up without sending it."""
    return hmac.new(secret, bytes.fromhex(sha256_hexdigest), hashlib.sha256).hexdigest()


# HMAC-SHA256 keyed with each server secret seen, its key schedule done once: a copy per digest. OpenSSL's HMAC object
# itself where Python has it (hmac.HMAC wraps the same object in Python methods: a copy, an update and a hexdigest
# through them cost about 1 us more per request).
class _Keyed(Protocol):
    def copy(self) -> _Keyed: ...

    def update(self, msg: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


_HMACS: dict[bytes, _Keyed] = {}
_openssl_hmac: Callable[..., _Keyed] | None
try:
    from _hashlib import hmac_new as _hmac_new

    _openssl_hmac = _hmac_new
except ImportError:  # a Python built without OpenSSL's hashlib
    _openssl_hmac = None


def _keyed(secret: bytes) -> _Keyed:
    if _openssl_hmac is not None:
        return _openssl_hmac(secret, digestmod="sha256")
    return hmac.new(secret, digestmod=hashlib.sha256)


def digest(secret: bytes, value: str) -> str:
    """The stored, keyed digest of a key."""
    base = _HMACS.get(secret)
    if base is None:
        base = _keyed(secret)
        if len(_HMACS) < 16:  # one server secret in practice (tests make more)
            _HMACS[secret] = base
    h = base.copy()
    h.update(hashlib.sha256(value.encode("utf-8")).digest())
    return h.hexdigest()


def redact(value: str) -> str:
    """Display form: ``sk-kp-proj-...abcd``."""
    m = KEY_PATTERN.match(value)
    prefix = f"{PREFIX}{m.group(1)}-" if m else value[:6]
    return f"{prefix}...{value[-4:]}"


def mask(value: str) -> str:
    """Error-message form, as the platform does: first 8 characters, one ``*`` per hidden one, last 4."""
    if len(value) <= 12:
        return "*" * len(value)
    return value[:8] + "*" * (len(value) - 12) + value[-4:]
