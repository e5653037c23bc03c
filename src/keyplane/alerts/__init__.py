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

The package's parts: model.py (the alert, the sink protocol, which sinks take which events), sinks.py
(the channels and building them from config), dispatch.py (the dispatcher: queueing, retries, counters).
Features import what they use from the package itself.
"""

from __future__ import annotations

from keyplane.alerts.config import check_sinks
from keyplane.alerts.dispatch import MAX_PENDING, Dispatcher, close_runtime, for_runtime
from keyplane.alerts.model import Alert, DeliveryError, Sink
from keyplane.alerts.sinks import (
    PAGERDUTY_URL,
    AlertConfigError,
    EmailSink,
    PagerDutySink,
    SlackSink,
    WebhookSink,
    build_sinks,
    sign,
    verify,
)

__all__ = [
    "MAX_PENDING",
    "PAGERDUTY_URL",
    "Alert",
    "AlertConfigError",
    "DeliveryError",
    "Dispatcher",
    "EmailSink",
    "PagerDutySink",
    "Sink",
    "SlackSink",
    "WebhookSink",
    "build_sinks",
    "check_sinks",
    "close_runtime",
    "for_runtime",
    "sign",
    "verify",
]
