"""Sign-in state every instance of a fleet shares, kept in the SQL store (SQLite or PostgreSQL).

- Ended sessions: sign-out writes the session's nonce; every instance (and the same one after a
  restart) refuses that cookie until it would have expired anyway.
- Used TOTP steps: a code (time step) is claimed with an INSERT on a (user, step) primary key, so it
  is accepted once across the fleet, whatever instance sees it first.
- The sign-in throttle. There is no account lock a stranger could trigger by knowing an email:
  failures count per (email, client address) pair, with exponential delays after a few free tries,
  and per client address (too many failures from one address, whatever the emails, block that
  address). A correct password and code from an address that is not failing always gets in.

Rows expire and are pruned as the tables are written; none holds an email or an address in clear
(throttle keys are keyed digests).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane.runtime import Runtime
from keyplane.store.models import WebLoginThrottle, WebSessionEnd, WebTotpStep
from keyplane.web import auth

TOTP_INTERVAL = 30
PRUNE_EVERY = 60.0  # seconds between two prunings of the throttle table by one instance


@dataclass(frozen=True)
class ThrottleRules:
    pair_free: int = 3  # failures of one (email, address) pair before delays start
    pair_base: float = 5.0  # the first delay; each further failure doubles it
    pair_max: float = 900.0  # the longest delay
    pair_forget: float = 86400.0  # a pair without failure for this long starts again from zero
    address_limit: int = 20  # failures from one address within address_window block it ...
    address_window: float = 900.0
    address_block: float = 900.0  # ... for this long


class SharedSignIn:
    """Ended sessions, used TOTP steps and the sign-in throttle, in SQL."""

    def __init__(self, rt: Runtime, rules: ThrottleRules | None = None) -> None:
        self.rt = rt
        self.rules = rules or ThrottleRules()
        self._key = auth.derive_key(rt.settings.secret_key, "sign-in throttle")
        self._pruned_at = -math.inf

    def _now(self) -> float:
        return self.rt.clock.now()

    # --- sessions ----------------------------------------------------------------------------

    async def end_session(self, s: auth.Session) -> None:
        now = self._now()
        expires = math.ceil(s.expires_at or now + auth.SESSION_SECONDS)
        if expires <= now:
            return
        async with self.rt.sessions() as db, db.begin():
            await db.execute(delete(WebSessionEnd).where(WebSessionEnd.expires_at < int(now)))
            await db.execute(
                _insert_ignore(db, WebSessionEnd, nonce=s.nonce[:64], user_id=s.user_id, expires_at=expires)
            )

    async def session_ended(self, s: auth.Session) -> bool:
        async with self.rt.read() as db:
            row = (
                await db.execute(select(WebSessionEnd.expires_at).where(WebSessionEnd.nonce == s.nonce[:64]))
            ).scalar()
        return row is not None

    # --- TOTP steps --------------------------------------------------------------------------

    async def claim_step(self, user_id: str, step: int) -> bool:
        """True the first time a (user, step) is claimed on any instance, False ever after."""
        now = self._now()
        # A step can match while the clock is within one step of it (auth.totp_step): keep it past that.
        expires = (step + 3) * TOTP_INTERVAL
        try:
            async with self.rt.sessions() as db, db.begin():
                await db.execute(delete(WebTotpStep).where(WebTotpStep.expires_at < int(now)))
                db.add(WebTotpStep(user_id=user_id, step=step, expires_at=expires))
        except IntegrityError:
            return False
        return True

    # --- throttle ----------------------------------------------------------------------------

    def _keys(self, email: str, ip: str) -> tuple[str, str]:
        def digest(text: str) -> str:
            return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()[:48]

        return "p:" + digest(f"pair\0{email.strip().lower()[:320]}\0{ip}"), "a:" + digest(f"address\0{ip}")

    async def wait(self, email: str, ip: str) -> float:
        """Seconds before this address may try this email again (0: now)."""
        now = self._now()
        async with self.rt.read() as db:
            until = (
                (
                    await db.execute(
                        select(WebLoginThrottle.blocked_until).where(WebLoginThrottle.key.in_(self._keys(email, ip)))
                    )
                )
                .scalars()
                .all()
            )
        return max([0.0, *(u - now for u in until)])

    async def failure(self, email: str, ip: str) -> None:
        now = self._now()
        r = self.rules
        pair, address = self._keys(email, ip)
        async with self.rt.sessions() as db, db.begin():
            for key in sorted((pair, address)):  # one lock order for every instance
                await db.execute(
                    _insert_ignore(
                        db, WebLoginThrottle, key=key, failures=0, first_at=now, last_at=now, blocked_until=0.0
                    )
                )
                row = (
                    await db.execute(select(WebLoginThrottle).where(WebLoginThrottle.key == key).with_for_update())
                ).scalar_one()
                if key == pair:
                    if now - row.last_at > r.pair_forget:
                        row.failures, row.first_at = 0, now
                    row.failures += 1
                    if row.failures >= r.pair_free:
                        delay = min(r.pair_base * 2.0 ** min(row.failures - r.pair_free, 32), r.pair_max)
                        row.blocked_until = now + delay
                else:
                    if now - row.first_at > r.address_window:
                        row.failures, row.first_at = 0, now
                    row.failures += 1
                    if row.failures >= r.address_limit:
                        row.blocked_until = now + r.address_block
                        row.failures, row.first_at = 0, now
                row.last_at = now
            if self.rt.clock.monotonic() - self._pruned_at > PRUNE_EVERY:
                self._pruned_at = self.rt.clock.monotonic()
                horizon = now - max(r.pair_forget, r.address_window)
                await db.execute(
                    delete(WebLoginThrottle).where(
                        WebLoginThrottle.last_at < horizon, WebLoginThrottle.blocked_until < now
                    )
                )

    async def success(self, email: str, ip: str) -> None:
        """A full sign-in (password and second factor) clears the pair; the address keeps its count."""
        pair, _ = self._keys(email, ip)
        async with self.rt.sessions() as db, db.begin():
            await db.execute(delete(WebLoginThrottle).where(WebLoginThrottle.key == pair))


def _insert_ignore(
    db: AsyncSession, table: type[WebSessionEnd] | type[WebLoginThrottle], **values: str | float | None
) -> postgresql.Insert | sqlite.Insert:
    """INSERT ... ON CONFLICT DO NOTHING on either store."""
    if db.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table).values(**values).on_conflict_do_nothing()
    return sqlite.insert(table).values(**values).on_conflict_do_nothing()
