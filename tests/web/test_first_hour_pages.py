"""Issue 14 item 17 on the dashboard, over plain HTTP: kill-switch events name keys and projects, audit
details read as key: value lines, the TOTP setup key never wraps inside a group, custom rate limits are
marked against the tier's defaults."""

from __future__ import annotations

import html
import re

import httpx
import orjson

from keyplane.guard.models import GuardEvent
from tests.web.conftest import OWNER, PASSWORD


def _admin(srv, method: str, path: str, json: object = None) -> dict:
    r = httpx.request(
        method, f"{srv.base_url}/v1/organization{path}", json=json, headers={"Authorization": f"Bearer {srv.admin_key}"}
    )
    assert r.status_code < 300, r.text
    return r.json()


def test_totp_setup_key_groups_of_four(web):
    r = web.password_step(OWNER, PASSWORD)
    assert r.headers["location"].startswith("/login/enroll")
    page = web.get("/login/enroll").text
    m = re.search(r'<code class="secret groups" id="totp-secret">([A-Z2-7 ]+)</code>', page)
    assert m, page[:2000]
    assert re.fullmatch(r"([A-Z2-7]{4} )*[A-Z2-7]{1,4}", m.group(1))
    css = web.get("/static/app.css").text
    assert re.search(r"\.secret\.groups \{[^}]*word-break: normal", css)  # breaks between groups only


def test_kill_switch_events_show_names(owner, web_server):
    srv = web_server
    key = _admin(srv, "POST", f"/projects/{srv.project_id}/api_keys", {"name": "leaky-ci-key", "permissions": "all"})

    async def add() -> None:
        async with srv.app.runtime.engine.begin() as c:
            await c.execute(
                GuardEvent.__table__.insert().values(
                    id="gev_test1",
                    created_at=1_800_000_000,
                    rule="spend_spike",
                    kind="anomaly",
                    scope="key",
                    key_id=key["id"],
                    project_id=srv.project_id,
                    mode="suspend",
                    action="suspended",
                    dry_run=False,
                    figures=orjson.dumps({"spend": 12.5}).decode(),
                    message="Spend 25x the usual rate",
                    resolved_at=None,
                )
            )

    srv.call(add())
    page = owner.get("/kill-switch").text
    table = page.split('id="guard-events"')[1].split("</table>")[0]
    assert "leaky-ci-key" in table and "Default project" in table  # names shown...
    assert f'title="{key["id"]}"' in table  # ...the id as a title and a secondary line
    assert "Spend 25x the usual rate" in table and "suspended" in table
    assert '<th scope="col">Key id</th>' not in table and "Figures" not in table


def test_audit_details_are_key_value_lines(owner, web_server):
    srv = web_server
    _admin(srv, "POST", f"/projects/{srv.project_id}/api_keys", {"name": "audited key", "permissions": "read_only"})
    page = owner.get("/audit").text
    cells = re.findall(r'<td data-label="Details" class="small details">(.*?)</td>', page, re.S)
    assert cells
    lines = [
        html.unescape(re.sub(r"<[^>]+>", "", x)) for c in cells for x in re.findall(r'<div class="kv">.*?</div>', c)
    ]
    assert any(line.startswith("id: key_") for line in lines), lines
    assert not any(c.strip().startswith("{") for c in cells)  # no raw JSON


def test_custom_rate_limits_marked_against_tier_defaults(owner, web_server):
    srv = web_server
    pid = srv.project_id
    rates = _admin(srv, "GET", f"/projects/{pid}/rate_limits?limit=100")["data"]
    assert len(rates) >= 2
    custom, other = rates[0], rates[1]
    _admin(srv, "POST", f"/projects/{pid}/rate_limits/{custom['id']}", {"max_requests_per_1_minute": 7})
    page = owner.get(f"/projects/{pid}").text
    table = page.split('id="rate-limit-table"')[1].split("</table>")[0]
    rows = {m.group(1): m.group(0) for m in re.finditer(r'<span class="mono">([^<]+)</span>.*?</tr>', table, re.S)}
    assert 'class="badge custom"' in rows[custom["model"]]
    assert "tier default" in rows[other["model"]] and "badge custom" not in rows[other["model"]]
    # the custom value says what the tier would give
    assert re.search(r'class="num custom-value" title="custom; tier default [\d,]+"', rows[custom["model"]])
    # every input of a row belongs to that row's Save form
    body = table.split("<tbody>")[1]
    for m in re.finditer(r"<tr>.*?</tr>", body, re.S):
        forms = set(re.findall(r'form="(rl-[^"]+)"', m.group(0)))
        ids = set(re.findall(r'<form id="(rl-[^"]+)"', m.group(0)))
        assert forms == ids and len(ids) == 1


def test_resets_read_as_a_countdown_in_days(owner, web_server):
    _admin(web_server, "POST", "/spend_limit", {"currency": "USD", "interval": "month", "threshold_amount": 5000})
    page = owner.get("/credit").text
    m = re.search(r"resets <time[^>]*>[^<]*</time> \(in ((\d+d)?(\d+h)?(\d+m)?\d+s)\)", page)
    assert m, page[page.find("resets") - 200 : page.find("resets") + 300]
    assert "." not in m.group(1)  # whole seconds, never 727h40m11.059s
