"""Optional OpenTelemetry traces: one server span per request, sent over OTLP/HTTP.

On when ``otlp_endpoint`` is set. The packages are an optional extra (pip install 'keyplane[otel]');
without them keyplane says so once at start-up and runs without traces. The span is built after the
fact from the request context (start = end - latency; an event at the first token), with keyplane's
own TracerProvider: nothing global is set, so an application embedding keyplane keeps its own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext

log = logging.getLogger("keyplane.usage")

INSTALL_HINT = "pip install 'keyplane[otel]'"


class Tracing:
    def __init__(self, provider: Any, tracer: Any, span_kind: Any, status: Any) -> None:
        self.provider = provider
        self.tracer = tracer
        self._server = span_kind.SERVER
        self._error = status

    @classmethod
    def create(cls, settings: Any) -> Tracing | None:
        endpoint = settings.otlp_endpoint
        if not endpoint:
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import SpanKind, Status, StatusCode
        except ImportError as e:
            log.warning(
                "otlp_endpoint is set (%s) but the OpenTelemetry packages are not installed (%s): tracing is "
                "off. Install them with: %s",
                endpoint,
                e.name or e,
                INSTALL_HINT,
            )
            return None
        provider = TracerProvider(resource=Resource.create({"service.name": "keyplane"}), shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        log.info("OpenTelemetry traces go to %s", endpoint)
        return cls(provider, provider.get_tracer("keyplane"), SpanKind, lambda: Status(StatusCode.ERROR))

    def record(self, ctx: RequestContext, kind: str, end_s: float) -> None:
        end_ns = int(end_s * 1e9)
        start_ns = end_ns - int(ctx.latency_ms * 1e6)
        attrs = {
            "http.request.method": ctx.method,
            "url.path": ctx.endpoint,
            "http.response.status_code": ctx.status,
            "keyplane.request_id": ctx.request_id,
            "keyplane.project_id": ctx.project_id or "",
            "keyplane.api_key_id": ctx.key.id,
            "keyplane.kind": kind,
            "keyplane.stream": ctx.stream,
            "keyplane.upstream": ctx.upstream or "",
            "keyplane.attempts": ctx.attempts,
            "keyplane.disconnected": ctx.disconnected,
            "keyplane.cost_usd": ctx.cost_micros / 1e6,
            "gen_ai.request.model": ctx.model or "",
            "gen_ai.usage.input_tokens": ctx.prompt_tokens,
            "gen_ai.usage.output_tokens": ctx.completion_tokens,
        }
        span = self.tracer.start_span(
            f"{ctx.method} {ctx.endpoint}", kind=self._server, start_time=start_ns, attributes=attrs
        )
        if ctx.ttft_ms is not None:
            span.add_event("first_token", timestamp=start_ns + int(ctx.ttft_ms * 1e6))
        if ctx.status >= 500 or ctx.error:
            span.set_status(self._error())
            if ctx.error:
                span.set_attribute("error.type", ctx.error)
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        self.provider.shutdown()  # flushes the batch processor (blocking: call it from a thread)
