"""Optional OpenTelemetry traces: spans over OTLP/HTTP when configured; a clear message without the packages."""

from __future__ import annotations

import logging
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from openai import OpenAI

from keyplane.usage.tracing import Tracing


def test_missing_packages_are_reported_not_fatal(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    caplog.set_level(logging.WARNING, logger="keyplane.usage")
    assert Tracing.create(SimpleNamespace(otlp_endpoint="http://127.0.0.1:1/v1/traces")) is None
    assert "pip install 'keyplane[otel]'" in caplog.text and "tracing is off" in caplog.text
    assert Tracing.create(SimpleNamespace(otlp_endpoint="")) is None  # off by default, silently


class _Collector(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        _Collector.bodies.append(self.rfile.read(n))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_spans_reach_an_otlp_collector(gateway):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    _Collector.bodies = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        srv = gateway(KEYPLANE_OTLP_ENDPOINT=f"http://127.0.0.1:{httpd.server_port}/v1/traces")
        client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "secret prompt 8812"}]
        )
        rid = raw.headers["x-keyplane-request-id"]
        srv.stop()  # shutting down flushes the batch of spans
        deadline = time.monotonic() + 10
        while not _Collector.bodies and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        httpd.shutdown()
    spans = []
    for body in _Collector.bodies:
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                spans.extend(ss.spans)
    assert len(spans) == 1
    span = spans[0]
    attrs = {a.key: a.value for a in span.attributes}
    assert span.name == "POST /v1/chat/completions" and attrs["keyplane.request_id"].string_value == rid
    assert attrs["http.response.status_code"].int_value == 200 and attrs["gen_ai.usage.input_tokens"].int_value > 0
    assert span.end_time_unix_nano > span.start_time_unix_nano
    blob = b"".join(_Collector.bodies)
    assert b"secret prompt 8812" not in blob and srv.api_key.encode() not in blob
