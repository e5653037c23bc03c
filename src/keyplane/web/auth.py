"""Dashboard authentication: passwords, TOTP, recovery codes, signed sessions, CSRF, throttling.

Sessions are signed cookies (HMAC-SHA256 with a key derived from the server secret), not server
rows: any instance of a fleet accepts them. Each carries a stamp of the user's credentials, so
``keyplane users set-password`` or a 2FA reset ends every session of that user at once. Sign-out
records the session's nonce in the shared store (keyplane.web.fleet), which also keeps the used TOTP
steps and the sign-in throttle, so every instance of a fleet, and a restarted one, agrees.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from keyplane.clock import Clock

COOKIE = "kp_session"
COOKIE_SECURE = "__Host-kp_session"  # the __Host- prefix pins it to this host, path / and HTTPS
SESSION_SECONDS = 12 * 3600
PENDING_SECONDS = 10 * 60  # between a correct password and the TOTP step
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
RECOVERY_CODES = 10
ISSUER = "keyplane"

_hasher = PasswordHasher()


def _derive(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, f"keyplane web {purpose} v1".encode(), hashlib.sha256).digest()


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose, derived from the server secret."""
    return _derive(secret, purpose)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- passwords ---------------------------------------------------------------------------------


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_PASSWORD:
        return f"The password must have at least {MIN_PASSWORD} characters."
    if len(password) > MAX_PASSWORD:
        return f"The password must have at most {MAX_PASSWORD} characters."
    return None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    if not stored or len(password) > MAX_PASSWORD:
        # Same work either way, so timing does not tell which accounts have a password.
        _dummy_verify(password[:MAX_PASSWORD])
        return False
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


_DUMMY: list[str] = []


def _dummy_verify(password: str) -> None:
    if not _DUMMY:
        _DUMMY.append(_hasher.hash(secrets.token_urlsafe(16)))
    with contextlib.suppress(VerifyMismatchError, VerificationError, InvalidHashError):
        _hasher.verify(_DUMMY[0], password)


def generate_password() -> str:
    return "-".join(secrets.token_urlsafe(6) for _ in range(4))


# --- TOTP and recovery codes -------------------------------------------------------------------

if TYPE_CHECKING:
    from cryptography.fernet import Fernet


class SecretBox:
    """Fernet with a key derived from the server secret for one ``purpose``: TOTP secrets at rest (the
    default), provider keys of project bindings (keyplane.providers.bindings.KeyBox)."""

    def __init__(self, server_secret: bytes, purpose: str = "totp encryption") -> None:
        self._key = base64.urlsafe_b64encode(_derive(server_secret, purpose))
        self._f: Fernet | None = None

    def _fernet(self) -> Fernet:
        # cryptography is imported at the first seal or open, not at start-up: ~8 MB a serving process that
        # never signs anyone in does not need (issue 13, peak RSS).
        if self._f is None:
            from cryptography.fernet import Fernet

            self._f = Fernet(self._key)
        return self._f

    def seal(self, plain: str) -> str:
        return self._fernet().encrypt(plain.encode()).decode()

    def open(self, token: str) -> str | None:
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet().decrypt(token.encode()).decode()
        except (InvalidToken, ValueError):
            return None


def new_totp_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, email: str, org_name: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=f"{ISSUER} ({org_name})" if org_name else ISSUER)


def normalize_code(code: str) -> str:
    return "".join(ch for ch in code if ch.isalnum()).lower()


def totp_step(secret: str, code: str, now: float) -> int | None:
    """The time step a 6-digit code matches (one step of clock drift either way), or None."""
    code = normalize_code(code)
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    step = int(now // totp.interval)
    for s in (step, step - 1, step + 1):
        if hmac.compare_digest(totp.generate_otp(s), code):
            return s
    return None


def new_recovery_codes() -> list[str]:
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    return [
        "-".join("".join(secrets.choice(alphabet) for _ in range(5)) for _ in range(2)) for _ in range(RECOVERY_CODES)
    ]


def recovery_digest(server_secret: bytes, code: str) -> str:
    return hmac.new(_derive(server_secret, "recovery codes"), normalize_code(code).encode(), hashlib.sha256).hexdigest()


def use_recovery_code(server_secret: bytes, stored: str | None, code: str) -> str | None:
    """The stored list without the code when it is one of them (each works once), else None."""
    if not stored:
        return None
    digests: list[str] = orjson.loads(stored)
    d = recovery_digest(server_secret, code)
    for i, x in enumerate(digests):
        if hmac.compare_digest(x, d):
            return orjson.dumps(digests[:i] + digests[i + 1 :]).decode()
    return None


# --- sessions ----------------------------------------------------------------------------------


@dataclass
class Session:
    """What the cookie holds. ``stage``: anon | totp | enroll | full."""

    stage: str = "anon"
    user_id: str | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    issued_at: float = 0.0
    expires_at: float = 0.0
    stamp: str = ""
    flash: str | None = None
    dirty: bool = False  # set when the cookie must be sent again

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "s": self.stage,
                "u": self.user_id,
                "c": self.csrf,
                "n": self.nonce,
                "i": self.issued_at,
                "e": self.expires_at,
                "k": self.stamp,
                "f": self.flash,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Session:
        d: dict[str, Any] = orjson.loads(raw)
        return cls(
            stage=str(d["s"]),
            user_id=d.get("u"),
            csrf=str(d["c"]),
            nonce=str(d["n"]),
            issued_at=float(d["i"]),
            expires_at=float(d["e"]),
            stamp=str(d.get("k") or ""),
            flash=d.get("f"),
        )


class Sessions:
    def __init__(self, server_secret: bytes, clock: Clock) -> None:
        self._key = _derive(server_secret, "session signing")
        self._stamp_key = _derive(server_secret, "credential stamp")
        self.clock = clock

    def stamp(self, user: Any) -> str:
        """Changes whenever the user's password or second factor changes."""
        # A secret being enrolled (not enabled yet) does not count: storing it keeps the session.
        totp = user.totp_secret if user.totp_enabled else ""
        material = f"{user.id}|{user.password_hash or ''}|{totp or ''}|{bool(user.totp_enabled)}"
        return hmac.new(self._stamp_key, material.encode(), hashlib.sha256).hexdigest()[:32]

    def dump(self, s: Session) -> str:
        payload = s.to_json()
        sig = hmac.new(self._key, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(sig)}"

    def load(self, cookie: str | None) -> Session | None:
        if not cookie or len(cookie) > 4096 or "." not in cookie:
            return None
        body, _, sig = cookie.partition(".")
        try:
            payload, given = _unb64(body), _unb64(sig)
        except ValueError:
            return None
        if not hmac.compare_digest(hmac.new(self._key, payload, hashlib.sha256).digest(), given):
            return None
        try:
            s = Session.from_json(payload)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        now = self.clock.now()
        if s.expires_at and now >= s.expires_at:
            return None
        return s

    def anonymous(self) -> Session:
        now = self.clock.now()
        return Session(issued_at=now, expires_at=now + SESSION_SECONDS, dirty=True)

    def start(self, user: Any, stage: str) -> Session:
        """A fresh session (new nonce and CSRF token: no fixation across the login)."""
        now = self.clock.now()
        ttl = SESSION_SECONDS if stage == "full" else PENDING_SECONDS
        return Session(
            stage=stage, user_id=user.id, issued_at=now, expires_at=now + ttl, stamp=self.stamp(user), dirty=True
        )


def csrf_ok(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), str(given).encode())


# --- throttling (the counters live in keyplane.web.fleet) ---------------------------------------


def minutes(seconds: float) -> int:
    return max(1, int(-(-seconds // 60)))
