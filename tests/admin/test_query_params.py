"""Every integer query parameter of the admin, usage, billing and kill-switch APIs answers a bad value
(huge, negative, not a number) with a 400 in OpenAI's error shape, never a 500 (#12.11), through a
real server on SQLite and PostgreSQL (one per module and store: the calls only read)."""

from __future__ import annotations

import base64
import logging
import struct

import httpx
import pytest

BAD = ["1" + "0" * 30, "-1", "abc", "9" * 5000, "1e3", " "]
DAY = "1700000000"
GOOD = {"start_time": DAY, "end_time": "1700086400", "status": "200", "limit": "1"}


def _cases(pid: str) -> list[tuple[str, str, dict[str, str]]]:
    """(path under /v1/organization, integer parameter, the other parameters the call needs)."""
    usage = {"start_time": DAY}
    return [
        ("/projects", "limit", {}),
        (f"/projects/{pid}/api_keys", "limit", {}),
        (f"/projects/{pid}/service_accounts", "limit", {}),
        ("/users", "limit", {}),
        ("/admin_api_keys", "limit", {}),
        ("/audit_logs", "limit", {}),
        *[("/audit_logs", f"effective_at[{op}]", {}) for op in ("gt", "gte", "lt", "lte")],
        *[
            (f"/usage/{kind}", name, {} if name == "start_time" else usage)
            for kind in ("completions", "embeddings", "images")
            for name in ("start_time", "end_time", "limit")
        ],
        *[("/costs", name, {} if name == "start_time" else usage) for name in ("start_time", "end_time", "limit")],
        *[("/usage/requests", name, {}) for name in ("start_time", "end_time", "limit", "status")],
        ("/guard/rules", "limit", {}),
        ("/guard/events", "limit", {}),
        ("/credit_grants", "limit", {}),
        ("/spend_alerts", "limit", {}),
        (f"/projects/{pid}/rate_limits", "limit", {}),
    ]


@pytest.fixture
def http(shared_server):  # the module's one server: these calls only read and check validation
    with httpx.Client(
        base_url=shared_server.v1 + "/organization",
        headers={"Authorization": f"Bearer {shared_server.admin_key}"},
        timeout=30,
    ) as c:
        yield c


def _assert_400(r: httpx.Response, param: str) -> None:
    assert r.status_code == 400, (r.request.url, r.status_code, r.text[:300])
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] in (param, param.split("[")[0])
    assert error["code"] in ("invalid_value", "missing_required_parameter")
    assert "Traceback" not in r.text and "Error:" not in error["message"] and len(r.text) < 1000


def test_bad_integers_in_every_query_parameter_answer_400(shared_server, http, caplog) -> None:
    caplog.set_level(logging.ERROR)
    cases = _cases(shared_server.project_id)
    for path, name, extra in cases:
        good = http.get(path, params=extra | {name: GOOD.get(name, DAY if "effective" in name else "1")})
        assert good.status_code == 200, (path, name, good.text[:300])
        for value in BAD:
            r = http.get(path, params={**extra, name: value})
            if value == " " and name != "start_time":
                assert r.status_code in (200, 400), (path, name, r.text[:300])  # blank: the default
                continue
            _assert_400(r, name)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR], [
        rec.getMessage() for rec in caplog.records
    ][:5]


def test_bounds_are_inclusive_and_documented_in_the_message(http) -> None:
    assert http.get("/projects", params={"limit": "100"}).status_code == 200
    r = http.get("/projects", params={"limit": "101"})
    _assert_400(r, "limit")
    assert "from 1 to 100" in r.json()["error"]["message"]
    assert http.get("/audit_logs", params={"effective_at[gte]": "0"}).status_code == 200
    assert http.get("/audit_logs", params={"effective_at[lt]": "253402300799"}).status_code == 200
    _assert_400(http.get("/audit_logs", params={"effective_at[lt]": "253402300800"}), "effective_at[lt]")


def test_forged_usage_page_cursor_answers_400(http) -> None:
    forged = "page_" + base64.urlsafe_b64encode(struct.pack(">qq", 2**62, 2**62)).decode()
    r = http.get("/usage/completions", params={"start_time": DAY, "page": forged})
    _assert_400(r, "page")


def test_booleans_and_choices_are_validated_too(shared_server, http) -> None:
    for path, name in (
        ("/projects", "include_archived"),
        (f"/projects/{shared_server.project_id}/api_keys", "include_revoked"),
    ):
        assert http.get(path, params={name: "TRUE"}).status_code == 200
        _assert_400(http.get(path, params={name: "maybe"}), name)
    for path in ("/admin_api_keys", "/credit_grants"):
        assert http.get(path, params={"order": "desc"}).status_code == 200
        _assert_400(http.get(path, params={"order": "sideways"}), "order")
    _assert_400(http.get("/usage/completions", params={"start_time": DAY, "batch": "perhaps"}), "batch")
