"""The dashboard's project page marks keys that expire within 7 days (the first key.expiring notice)."""

from __future__ import annotations

import re

from tests.proxy.conftest import new_key
from tests.web.conftest import clock, owner, web, web_env, web_server  # noqa: F401  (fixtures)


def test_expiring_keys_are_marked(owner, web_server):  # noqa: F811
    soon = new_key(web_server, expires_in_seconds=3 * 86400)
    later = new_key(web_server, expires_in_seconds=30 * 86400)
    page = owner.get(f"/projects/{web_server.project_id}").text
    rows = {m.group(1): m.group(2) for m in re.finditer(r'<tr data-key-id="([^"]+)">(.*?)</tr>', page, re.S)}
    assert "expires soon" in rows[soon["id"]]
    assert "expires soon" not in rows[later["id"]]
    assert "until" in rows[later["id"]]
