"""What the features started in this process offer each other (Runtime.features).

One attribute per feature, typed with its real class; each is None while that feature is off (or not
started yet). A feature sets its own attributes in its ``start`` (app.FEATURES); the others read them
and treat None as "not running". The classes are imported only while type checking: the features
import keyplane.runtime, which imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keyplane.access.expiry import ExpiryNotifier
    from keyplane.access.policy import Policies
    from keyplane.alerts import Dispatcher
    from keyplane.billing.batches import Batches
    from keyplane.billing.engine import Billing
    from keyplane.guard.engine import Guard
    from keyplane.identity.oidc import JwksCache
    from keyplane.identity.state import IdentityState
    from keyplane.providers.bindings import UpstreamKeys
    from keyplane.providers.poller import Poller
    from keyplane.proxy.handler import ProxyApp
    from keyplane.proxy.realtime import RealtimeApp
    from keyplane.proxy.skipped import Skipped
    from keyplane.usage.applier import Applier
    from keyplane.usage.holds import Holds
    from keyplane.usage.journal import JournalWriter
    from keyplane.usage.metrics import Metrics
    from keyplane.usage.recorder import Recorder
    from keyplane.usage.storage import VectorStores


@dataclass
class Features:
    # keyplane.access: model, hosted tool and IP policies (checked by the proxy, the admin API, batches)
    access: Policies | None = None
    access_expiry: ExpiryNotifier | None = None  # `key.expiring` notices (access/expiry.py)
    # keyplane.identity: workload identity rules (auth, proxy) and the issuers' JWKS (token exchange, SSO)
    identity: IdentityState | None = None
    identity_jwks: JwksCache | None = None
    # keyplane.billing: prices, credit, limits (the engine) and the batches it reserves and meters
    billing: Billing | None = None
    batches: Batches | None = None
    # keyplane.usage: Prometheus metrics (/metrics), the journal's applier, writer and holds, the request path's
    # flush (sums -> prometheus_client, pending access-log lines -> the log), vector store sizes
    usage_metrics: Metrics | None = None
    usage_applier: Applier | None = None
    usage_writer: JournalWriter | None = None
    usage_holds: Holds | None = None  # the running requests under a money control (admission holds, usage/holds.py)
    usage_recorder: Recorder | None = None  # the journal's record and admission's hold (usage/recorder.py)
    usage_flush: Callable[[], None] | None = None
    usage_vector_stores: VectorStores | None = None
    # keyplane.providers: the provider usage poller and the projects' own provider keys (the proxy's key map)
    providers: Poller | None = None
    providers_keys: UpstreamKeys | None = None
    # keyplane.proxy: the /v1 app, its /v1/realtime app (made on first use), and the upstreams left out for
    # want of a key (proxy/skipped.py)
    proxy: ProxyApp | None = None
    realtime: RealtimeApp | None = None
    skipped_upstreams: Skipped | None = None
    guard: Guard | None = None  # keyplane.guard: the kill switch
    alerts: Dispatcher | None = None  # keyplane.alerts: the sinks' one dispatcher (alerts.for_runtime)
