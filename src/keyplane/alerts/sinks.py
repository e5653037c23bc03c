"""The alert channels: webhook (signed with keyplane-signature), Slack, PagerDuty Events v2 and email
(SMTP, off the event loop), and the sinks ``[[alerts.sinks]]`` configures, their secrets read from the
environment variables named there.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import smtplib
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

import aiohttp
import orjson

from keyplane.alerts.config import AlertSink, AlertsSection
from keyplane.alerts.model import Alert, DeliveryError, Sink

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"


def sign(secret: bytes, body: bytes) -> str:
    """The keyplane-signature header value of a webhook body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver does (docs/guard.md): constant-time comparison of the signature."""
    return hmac.compare_digest(sign(secret, body), header or "")


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
