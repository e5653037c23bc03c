"""Spend alerts fire once per month when spend crosses their threshold, off the request path, to the
configured alert sinks (a webhook here) and by email to their own recipients (a tiny SMTP server)."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from keyplane.billing import spend_firing
from tests.billing.conftest import COST, admin_http, billing_of

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


class _Smtp(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        mail: dict = {"to": [], "data": ""}
        self.wfile.write(b"220 test ESMTP\r\n")
        while True:
            line = self.rfile.readline().decode()
            if not line:
                return
            cmd = line[:4].upper()
            if cmd in ("EHLO", "HELO"):
                self.wfile.write(b"250 test\r\n")
            elif cmd == "MAIL":
                self.wfile.write(b"250 OK\r\n")
            elif cmd == "RCPT":
                mail["to"].append(line.split(":", 1)[1].strip().strip("<>"))
                self.wfile.write(b"250 OK\r\n")
            elif cmd == "DATA":
                self.wfile.write(b"354 go\r\n")
                data = []
                while (chunk := self.rfile.readline().decode()) not in (".\r\n", ""):
                    data.append(chunk)
                mail["data"] = "".join(data)
                self.server.mails.append(dict(mail))  # type: ignore[attr-defined]
                mail = {"to": [], "data": ""}
                self.wfile.write(b"250 OK\r\n")
            elif cmd == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 OK\r\n")


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.hooks.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def receivers() -> Iterator[tuple[object, object]]:
    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Smtp)
    smtp.mails = []  # type: ignore[attr-defined]
    smtp.daemon_threads = True
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    hook.hooks = []  # type: ignore[attr-defined]
    for s in (smtp, hook):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield smtp, hook
    for s in (smtp, hook):
        s.shutdown()
        s.server_close()


def _wait(cond, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)  # poll interval (a deadline loop)
    return False


def _checked_at(srv, spent: int) -> None:
    """Once the project's spend this month is ``spent`` (settled, nothing reserved), the alerts are checked as
    the billing task checks them: whatever was to fire at that spend has fired (its audit record is written
    before any notification is sent)."""
    billing = billing_of(srv)
    assert _wait(lambda: srv.call(billing.spent("project", srv.project_id)) == (spent, 0))
    srv.call(spend_firing.check_alerts(billing))


def _triggered(h, alert_id: str) -> int:
    data = h.get("/audit_logs", params={"resource_ids[]": alert_id}).json()["data"]
    return sum(e["type"] == "spend_alert.triggered" for e in data)


def test_spend_alert_fires_once(make_gateway, receivers):
    smtp, hook = receivers
    extra = (
        f'[[alerts.sinks]]\ntype = "webhook"\nurl = "http://127.0.0.1:{hook.server_address[1]}/hook"\n'
        'events = ["spend.*"]\n\n'
        f'[[alerts.sinks]]\ntype = "email"\nsmtp_host = "127.0.0.1"\nsmtp_port = {smtp.server_address[1]}\n'
        'smtp_security = "none"\nemail_from = "keyplane@example.com"\nemail_to = ["ops@example.com"]\n'
    )
    srv = make_gateway(extra)
    pid = srv.project_id
    with admin_http(srv) as h:
        r = h.post(
            f"/projects/{pid}/spend_alerts",
            json={
                "currency": "USD",
                "interval": "month",
                "threshold_amount": 1,
                "notification_channel": {
                    "type": "email",
                    "recipients": ["dev@example.com"],
                    "subject_prefix": "[acme]",
                },
            },
        )
        alert_id = r.json()["id"]
        auth = {"Authorization": f"Bearer {srv.api_key}"}
        assert httpx.post(srv.v1 + "/chat/completions", json=CHAT, headers=auth).status_code == 200
        _checked_at(srv, COST)
        assert _triggered(h, alert_id) == 0 and hook.hooks == []  # 0.8 cents: not yet
        assert httpx.post(srv.v1 + "/chat/completions", json=CHAT, headers=auth).status_code == 200
        assert _wait(lambda: len(hook.hooks) == 1 and len(smtp.mails) == 2)
        body = hook.hooks[0]
        assert body["event"] == "spend.threshold" and body["alert_id"] == alert_id and body["scope_id"] == pid
        assert body["spent"] == 2 and body["threshold_amount"] == 1 and body["summary"].startswith("[acme] Spend of")
        assert sorted(m["to"][0] for m in smtp.mails) == ["dev@example.com", "ops@example.com"]
        # more spend this month: no second notification
        for _ in range(3):
            httpx.post(srv.v1 + "/chat/completions", json=CHAT, headers=auth)
        _checked_at(srv, 5 * COST)
        assert _triggered(h, alert_id) == 1
        assert len(hook.hooks) == 1 and len(smtp.mails) == 2
        types = [e["type"] for e in h.get("/audit_logs", params={"resource_ids[]": alert_id}).json()["data"]]
        assert types == ["spend_alert.triggered", "spend_alert.created"]
