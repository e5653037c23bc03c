"""Alert sinks: webhook (signed), Slack, PagerDuty Events v2, email; delivered off the request path.

Any feature sends an :class:`Alert` through the runtime's one :class:`Dispatcher`
(``alerts.for_runtime(rt).send(alert)``): it returns at once; each configured sink whose ``events``
patterns match the alert's event gets it in a background task, retried with exponential backoff and
jitter on connection errors, timeouts, 429 and 5xx. Outcomes are counted in ``Dispatcher.counters``
(``{"<sink type>:<delivered|retried|failed|dropped>": n}``) for the metrics endpoint, and failures are
logged. Sinks come from ``[[alerts.sinks]]`` in keyplane.toml (schema and checks: config.py); their
secrets from environment variables named there, never the file.

Webhook body: ``{"object": "keyplane.alert", "id", "event", "created_at", "severity", "summary", ...details}``,
signed with ``keyplane-signature: sha256=<hex HMAC-SHA256(secret, body)>`` (docs/guard.md shows how
to verify it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fnmatch
import hashlib
import hmac
import logging
import os
import random
import smtplib
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

import aiohttp
import orjson

from keyplane import ids
from keyplane.alerts.config import AlertSink, AlertsSection, check_sinks

log = logging.getLogger("keyplane.alerts")

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
MAX_PENDING = 1000


@dataclass(frozen=True, slots=True)
class Alert:
    event: str  # e.g. guard.fired, guard.resolved, guard.test, spend.threshold
    summary: str  # one line, for humans
    details: dict[str, Any] = field(default_factory=dict)  # event fields, merged into the webhook body
    severity: str = "critical"  # critical | error | warning | info
    dedup_key: str | None = None  # PagerDuty incident key (trigger and resolve share it)
    resolve: bool = False  # a resolution of dedup_key, not a new alert
    id: str = field(default_factory=lambda: ids.new_id("alert_"))
    created_at: float = field(default_factory=time.time)

    def payload(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "object": "keyplane.alert",
            "id": self.id,
            "event": self.event,
            "created_at": int(self.created_at),
            "severity": self.severity,
            "summary": self.summary,
        }
        d.update(self.details)
        return d


class DeliveryError(Exception):
    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


def sign(secret: bytes, body: bytes) -> str:
    """The keyplane-signature header value of a webhook body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver does (docs/guard.md): constant-time comparison of the signature."""
    return hmac.compare_digest(sign(secret, body), header or "")


class Sink(Protocol):
    type: str
    name: str
    events: list[str]

    async def send(self, alert: Alert, http: aiohttp.ClientSession) -> None: ...


def _accepts(sink: Sink, alert: Alert) -> bool:
    return not sink.events or any(fnmatch.fnmatchcase(alert.event, p) for p in sink.events)


async def _post(http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], seconds: float) -> None:
    try:
        async with http.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=seconds), allow_redirects=False
        ) as r:
            text = (await r.read())[:300].decode("utf-8", "replace")
            if r.status >= 300:
                retry = r.status == 429 or r.status >= 500 or r.status == 408
                raise DeliveryError(f"HTTP {r.status}: {text}", retry=retry)
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        raise DeliveryError(f"{type(e).__name__}: {e}") from None


class WebhookSink:
    type = "webhook"

    def __init__(self, cfg: AlertSink, secret: bytes | None) -> None:
        self.name = cfg.name or "webhook"
        self.url = cfg.url
        self.secret = secret
        self.events = cfg.events
        self.timeout = cfg.timeout

    async def send(self, alert: Alert, http: aiohttp.ClientSession) -> None:
        body = orjson.dumps(alert.payload())
        headers = {
            "content-type": "application/json",
            "user-agent": "keyplane-alerts",
            "keyplane-event": alert.event,
            "keyplane-delivery": alert.id,
        }
        if self.secret is not None:
            headers["keyplane-signature"] = sign(self.secret, body)
        await _post(http, self.url, body, headers, self.timeout)


def _detail_lines(alert: Alert) -> list[str]:
    lines = []
    for k, v in alert.details.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items() if b is not None)
        lines.append(f"{k}: {v}")
    return lines


class SlackSink:
    type = "slack"

    def __init__(self, cfg: AlertSink) -> None:
        self.name = cfg.name or "slack"
        self.url = cfg.url
        self.events = cfg.events
        self.timeout = cfg.timeout

    async def send(self, alert: Alert, http: aiohttp.ClientSession) -> None:
        icon = ":white_check_mark:" if alert.resolve else ":rotating_light:"
        text = f"{icon} *keyplane*: {alert.summary}"
        detail = "\n".join(_detail_lines(alert))
        body = {
            "text": text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                {"type": "section", "text": {"type": "mrkdwn", "text": f"```{detail}```" if detail else "-"}},
            ],
        }
        await _post(http, self.url, orjson.dumps(body), {"content-type": "application/json"}, self.timeout)


class PagerDutySink:
    type = "pagerduty"

    def __init__(self, cfg: AlertSink, routing_key: str) -> None:
        self.name = cfg.name or "pagerduty"
        self.url = cfg.url or PAGERDUTY_URL
        self.routing_key = routing_key
        self.events = cfg.events
        self.timeout = cfg.timeout

    async def send(self, alert: Alert, http: aiohttp.ClientSession) -> None:
        body: dict[str, Any] = {
            "routing_key": self.routing_key,
            "event_action": "resolve" if alert.resolve else "trigger",
            "dedup_key": alert.dedup_key or alert.id,
        }
        if not alert.resolve:
            body["payload"] = {
                "summary": alert.summary[:1024],
                "source": "keyplane",
                "severity": alert.severity,
                "component": "kill switch" if alert.event.startswith("guard.") else "keyplane",
                "class": alert.event,
                "custom_details": alert.payload(),
            }
        await _post(http, self.url, orjson.dumps(body), {"content-type": "application/json"}, self.timeout)


class EmailSink:
    type = "email"

    def __init__(self, cfg: AlertSink, password: str | None) -> None:
        self.name = cfg.name or "email"
        self.cfg = cfg
        self.password = password
        self.events = cfg.events

    def _message(self, alert: Alert) -> EmailMessage:
        msg = EmailMessage()
        prefix = "[keyplane] resolved: " if alert.resolve else "[keyplane] "
        msg["Subject"] = (prefix + alert.summary)[:200]
        msg["From"] = self.cfg.email_from
        msg["To"] = ", ".join(self.cfg.email_to)
        msg["X-Keyplane-Event"] = alert.event
        body = (
            alert.summary
            + "\n\n"
            + "\n".join(_detail_lines(alert))
            + "\n\n"
            + orjson.dumps(alert.payload(), option=orjson.OPT_INDENT_2).decode()
            + "\n"
        )
        msg.set_content(body)
        return msg

    def _send_sync(self, msg: EmailMessage) -> None:
        c = self.cfg
        ctx = ssl.create_default_context()
        smtp: smtplib.SMTP
        if c.smtp_security == "ssl":
            smtp = smtplib.SMTP_SSL(c.smtp_host, c.smtp_port, timeout=c.timeout, context=ctx)
        else:
            smtp = smtplib.SMTP(c.smtp_host, c.smtp_port, timeout=c.timeout)
        with smtp:
            if c.smtp_security == "starttls":
                smtp.starttls(context=ctx)
            if c.smtp_username:
                smtp.login(c.smtp_username, self.password or "")
            smtp.send_message(msg)

    async def send(self, alert: Alert, http: aiohttp.ClientSession) -> None:
        try:
            await asyncio.to_thread(self._send_sync, self._message(alert))
        except smtplib.SMTPResponseException as e:
            raise DeliveryError(
                f"SMTP {e.smtp_code}: {e.smtp_error!r}", retry=e.smtp_code >= 400 and e.smtp_code < 500
            ) from None
        except (smtplib.SMTPException, OSError) as e:
            raise DeliveryError(f"{type(e).__name__}: {e}") from None


class AlertConfigError(ValueError):
    pass


def build_sinks(section: AlertsSection, env: Mapping[str, str]) -> list[Sink]:
    """Sinks from config, secrets read from ``env``; AlertConfigError when a named variable is unset."""

    def need(i: int, field_name: str, var: str) -> str:
        value = env.get(var, "")
        if not value:
            raise AlertConfigError(f"$.alerts.sinks[{i}].{field_name}: environment variable {var} is not set")
        return value

    sinks: list[Sink] = []
    for i, s in enumerate(section.sinks):
        if s.type == "webhook":
            secret = need(i, "secret_env", s.secret_env).encode() if s.secret_env else None
            sinks.append(WebhookSink(s, secret))
        elif s.type == "slack":
            sinks.append(SlackSink(s))
        elif s.type == "pagerduty":
            sinks.append(PagerDutySink(s, need(i, "routing_key_env", s.routing_key_env)))
        elif s.type == "email":
            pw = need(i, "smtp_password_env", s.smtp_password_env) if s.smtp_password_env else None
            sinks.append(EmailSink(s, pw))
    return sinks


Sleep = Callable[[float], Awaitable[None]]


class Dispatcher:
    """Delivers alerts to sinks in background tasks, with retries; never raises into the caller."""

    def __init__(
        self,
        sinks: list[Sink],
        *,
        max_attempts: int = 6,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.sinks = sinks
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._sleep = sleep
        self._rand = rand
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[bool]] = set()
        self.counters: collections.Counter[str] = collections.Counter()
        self.last_error: dict[str, str] = {}

    @classmethod
    def from_config(cls, section: AlertsSection, env: Mapping[str, str] | None = None, **kw: Any) -> Dispatcher:
        return cls(
            build_sinks(section, os.environ if env is None else env),
            max_attempts=section.max_attempts,
            backoff=section.retry_backoff,
            backoff_max=section.retry_backoff_max,
            **kw,
        )

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        return self._http

    def send(self, alert: Alert) -> int:
        """Queue ``alert`` for every sink that takes its event; returns how many deliveries were queued."""
        n = 0
        for sink in self.sinks:
            if not _accepts(sink, alert):
                continue
            if len(self._tasks) >= MAX_PENDING:
                self.counters[f"{sink.type}:dropped"] += 1
                log.error("alert %s to %s dropped: %d deliveries already pending", alert.id, sink.name, MAX_PENDING)
                continue
            task = asyncio.get_running_loop().create_task(self._deliver(alert, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
        return n

    async def deliver_now(self, alert: Alert) -> list[tuple[str, str, str | None]]:
        """Send to every sink and wait (the CLI's test-alert): [(sink name, delivered|failed, error)]."""
        results = []
        for sink in self.sinks:
            if not _accepts(sink, alert):
                continue
            ok = await self._deliver(alert, sink)
            results.append((sink.name, "delivered" if ok else "failed", None if ok else self.last_error.get(sink.name)))
        return results

    async def _deliver(self, alert: Alert, sink: Sink) -> bool:
        for attempt in range(1, self.max_attempts + 1):
            try:
                await sink.send(alert, self._session())
            except DeliveryError as e:
                self.last_error[sink.name] = str(e)
                if not e.retry or attempt == self.max_attempts:
                    self.counters[f"{sink.type}:failed"] += 1
                    log.error(
                        "alert %s (%s) to %s sink %r failed after %d attempt(s): %s",
                        alert.id,
                        alert.event,
                        sink.type,
                        sink.name,
                        attempt,
                        e,
                    )
                    return False
                self.counters[f"{sink.type}:retried"] += 1
                delay = min(self.backoff * 2 ** (attempt - 1), self.backoff_max) * (1 + 0.25 * self._rand())
                log.warning(
                    "alert %s to %s sink %r failed (%s); retry %d in %.1fs",
                    alert.id,
                    sink.type,
                    sink.name,
                    e,
                    attempt,
                    delay,
                )
                await self._sleep(delay)
            except Exception:
                self.counters[f"{sink.type}:failed"] += 1
                log.exception("alert %s to %s sink %r: unexpected error", alert.id, sink.type, sink.name)
                return False
            else:
                self.counters[f"{sink.type}:delivered"] += 1
                return True
        return False

    async def drain(self) -> None:
        """Wait for the deliveries queued so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self, grace: float = 5.0) -> None:
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drain(), grace)
        for t in list(self._tasks):
            t.cancel()
        if self._http is not None:
            await self._http.close()
            self._http = None


def for_runtime(rt: Any) -> Dispatcher:
    """The runtime's one dispatcher (created on first use; features share it). Stop it with :func:`close_runtime`."""
    d: Dispatcher | None = rt.features.alerts
    if d is None:
        d = Dispatcher.from_config(rt.settings.file.alerts)
        rt.features.alerts = d
    return d


async def close_runtime(rt: Any) -> None:
    d: Dispatcher | None = rt.features.alerts
    rt.features.alerts = None
    if d is not None:
        await d.aclose()


__all__ = ["Alert", "Dispatcher", "Sink", "check_sinks", "for_runtime", "sign", "verify"]
