"""The dashboard in a real browser (headless Chromium through Playwright) against a real server.

Walks the issue's story: first sign-in with TOTP enrolment, a wrong code refused, a project, a
restricted key read from its once-only dialog and used with the openai SDK, the request on the
Usage page, a spend limit, revocation, sign-out; a custom role and a group, a project's model, hosted tool
and IP policies, the organization's Access page and the SSO status (issue 16), with bad input shown on the
page; a reader who can change nothing; CSRF-less posts refused. Writes the screenshots of docs/screenshots/
on the way.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from keyplane.config import DEFAULT_CONFIG
from tests.support import Gateways
from tests.web.conftest import OWNER, PASSWORD, OffsetClock, with_owner_password

CHROMIUM = "/usr/bin/chromium"
# The docs' screenshots are rewritten only when asked (KEYPLANE_UPDATE_SCREENSHOTS=1): a test run must not
# leave the working tree changed. Otherwise they go to a scratch folder.
SHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("KEYPLANE_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "keyplane-screenshots"
)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium",
    ),
]

CONFIG = DEFAULT_CONFIG + '\n[prices."demo-*"]\ninput = 2.5\noutput = 10\n'


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def site(gateways: Gateways) -> tuple[Any, OffsetClock]:
    clock = OffsetClock()
    return gateways.start(CONFIG, clock, seed=with_owner_password), clock


class Pages:
    """One browser context (one person) on the dashboard, with the console watched for CSP errors."""

    def __init__(
        self, browser: Any, base: str, clock: OffsetClock, viewport: dict[str, int] = DESKTOP, storage: Any = None
    ) -> None:
        self.ctx = browser.new_context(
            viewport=viewport, base_url=base, storage_state=storage, locale="en-US", timezone_id="Europe/Paris"
        )
        self.page = self.ctx.new_page()
        self.page.set_default_timeout(15_000)
        self.clock = clock
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: d.accept())
        self.secret = ""

    def code(self) -> str:
        self.clock.advance(30)
        return pyotp.TOTP(self.secret).at(self.clock.now())

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.wait_for_load_state("networkidle")
        self.page.screenshot(path=str(SHOTS / f"{name}.png"))

    def enroll(self, email: str, password: str, shots: bool = False) -> list[str]:
        p = self.page
        p.goto("/login")
        p.get_by_label("Email").fill(email)
        p.get_by_label("Password").fill(password)
        if shots:
            self.shot("login-desktop")
        p.get_by_role("button", name="Continue").click()
        p.wait_for_url("**/login/enroll*")
        assert p.locator("figure.qr svg").count() == 1
        self.secret = p.locator("#totp-secret").inner_text().replace(" ", "")
        if shots:
            self.shot("enroll-desktop")
        # A wrong code is refused.
        wrong = "000000" if pyotp.TOTP(self.secret).at(self.clock.now() + 30) != "000000" else "111111"
        p.get_by_label("Code from the app").fill(wrong)
        p.get_by_role("button", name="Turn on and continue").click()
        assert "does not match" in p.locator("#login-error").inner_text()
        p.get_by_label("Code from the app").fill(self.code())
        p.get_by_role("button", name="Turn on and continue").click()
        codes = p.locator("#recovery-codes code").all_inner_texts()
        assert len(codes) == 10, p.locator("main").inner_text()
        p.locator("#codes-continue").click()
        p.wait_for_url(re.compile(r".*/$"))
        return codes

    def close(self) -> None:
        self.ctx.close()


def _proxy_works(base: str, key: str) -> bool:
    import httpx

    r = httpx.post(
        base + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "demo-echo", "messages": [{"role": "user", "content": "ping"}]},
        timeout=20,
    )
    return r.status_code == 200


def test_owner_story_and_reader(site: tuple[Any, OffsetClock], browser: Any) -> None:
    srv, clock = site
    owner = Pages(browser, srv.base_url, clock)
    p = owner.page
    owner.enroll(OWNER, PASSWORD, shots=True)
    assert p.locator("h1").inner_text() == "Overview"

    # A project and a restricted key, read from the once-only dialog.
    p.get_by_role("link", name="Projects").click()
    p.get_by_label("Name").fill("Support bot")
    p.get_by_role("button", name="Create project").click()
    p.wait_for_url("**/projects/proj_*")
    pid = p.url.rsplit("/", 1)[1]
    assert "Support bot" in p.locator("h1").inner_text()
    p.get_by_label("Name", exact=True).fill("support-prod")
    p.get_by_label("Restricted").check()
    p.get_by_label("Models and model capabilities").select_option("request")
    p.get_by_role("button", name="Create key").click()
    dialog = p.locator("dialog#secret-dialog")
    dialog.wait_for()
    assert "will not be shown again" in dialog.inner_text()
    key = p.input_value("#secret-value")
    assert key.startswith("sk-kp-proj-")
    owner.shot("key-dialog-desktop")
    p.locator("#secret-done").click()
    p.wait_for_url(f"**/projects/{pid}")
    row = p.locator("#keys tbody tr").first
    assert "Restricted" in row.inner_text() and key not in p.content()

    # The key works with the official SDK, within its permissions.
    if _proxy_works(srv.base_url, key):
        from openai import OpenAI, PermissionDeniedError

        client = OpenAI(base_url=srv.v1, api_key=key, max_retries=0)
        for i in range(3):
            out = client.chat.completions.create(
                model="demo-echo", messages=[{"role": "user", "content": f"hello {i}"}]
            )
            assert out.choices[0].message.content
        with pytest.raises(PermissionDeniedError):
            client.files.list()

        # The requests show on the Usage page once metering applied them.
        p.get_by_role("link", name="Usage").click()
        if p.locator("#total-requests").count():

            def total() -> int:
                return int(p.locator("#total-requests").inner_text().replace(",", "") or 0)

            deadline = time.monotonic() + 20
            while total() < 4 and time.monotonic() < deadline:  # metering applies in batches
                time.sleep(0.5)
                p.reload()
            assert total() >= 4
            assert p.locator("#usage-table tbody tr").count() >= 1
            assert p.locator(".chart .uplot").count() >= 2
            with p.expect_download() as dl:
                p.get_by_role("link", name="Export CSV").click()
            assert "demo-echo" in Path(dl.value.path()).read_text()
    else:
        client = None

    # A spend limit, when billing is there.
    p.goto(f"/projects/{pid}")
    if p.locator("#spend-amount").count():
        p.get_by_label("Limit in USD per month (empty: no limit)").fill("250")
        p.get_by_role("button", name="Save limit").click()
        p.wait_for_url(f"**/projects/{pid}*")
        assert "$250.00" in p.locator("#current-spend-limit").inner_text()

    # Rate limits per model, when limits are there.
    if p.locator("#rate-limit-table").count():
        row = p.locator("#rate-limit-table tbody tr").first
        model = row.locator("td .mono").first.inner_text()
        row.get_by_label(f"Max requests per 1 minute for {model}").fill("613")
        row.get_by_role("button", name="Save").click()
        p.wait_for_url(f"**/projects/{pid}*")
        assert "Rate limit saved" in p.locator("#flash-slot").inner_text()
        assert (
            p.locator("#rate-limit-table tbody tr")
            .first.get_by_label(f"Max requests per 1 minute for {model}")
            .input_value()
            == "613"
        )
        # marked against the tier's defaults (issue 14): this row custom, the others the tier's
        assert p.locator("#rate-limit-table tbody tr").first.locator(".badge.custom").count() == 1
        assert p.locator("#rate-limit-table .badge.custom").count() == 1

    # Roles & groups: a custom role (a bad name first: the error is on the page), then a group holding it.
    p.locator("nav.nav").get_by_role("link", name="Roles & groups").click()
    p.wait_for_url("**/roles")
    p.locator("#new-role summary").click()
    p.locator("#role-name").fill("Owner")
    p.locator("#new-api-project-write").check()
    p.get_by_role("button", name="Create role").click()
    assert "predefined role" in p.locator("#form-error").inner_text()
    assert p.locator("#role-name").input_value() == "Owner" and p.locator("#new-api-project-write").is_checked()
    p.locator("#role-name").fill("deployer")
    p.get_by_role("button", name="Create role").click()
    p.wait_for_url("**/roles")
    assert "Role “deployer” created." in p.locator("#flash-slot").inner_text()
    assert p.locator("#role-table tbody tr", has_text="deployer").count() == 1
    p.get_by_label("Group name").fill("platform")
    p.get_by_role("button", name="Create group").click()
    p.wait_for_url("**/groups/group_*")
    p.get_by_label("Role", exact=True).select_option(label="deployer")
    p.get_by_role("button", name="Give role").click()
    p.wait_for_url("**/groups/group_*")
    assert "api.project.write" in p.locator("#group-role-table").inner_text()

    # The project's access: an allow list, a hosted tool off, a bad IP range refused on the page.
    p.goto(f"/projects/{pid}")
    p.get_by_role("link", name="Access of this project").click()
    p.wait_for_url(f"**/projects/{pid}/access")
    p.get_by_label("Allow only these").check()
    p.get_by_label("Model ids, one per line").fill("demo-*")
    p.get_by_role("button", name="Save model permissions").click()
    p.wait_for_url(f"**/projects/{pid}/access")
    assert "Model permissions saved." in p.locator("#flash-slot").inner_text()
    assert "demo-*" in p.locator("#model-ids").inner_text()
    p.locator("#tool-web_search").uncheck()
    p.get_by_role("button", name="Save hosted tools").click()
    p.wait_for_url(f"**/projects/{pid}/access")
    assert not p.locator("#tool-web_search").is_checked() and p.locator("#tool-mcp").is_checked()
    p.locator("#ip-cidrs-input").fill("10.0.0.5/8")
    p.get_by_role("button", name="Save allowlist").click()
    assert "host bits" in p.locator("#form-error").inner_text()
    assert p.locator("#ip-cidrs-input").input_value() == "10.0.0.5/8"
    owner.shot("project-access-desktop")
    p.locator("nav.nav").get_by_role("link", name="Access", exact=True).click()
    p.wait_for_url("**/access")
    assert "allow_list: demo-*" in p.locator("#policy-table").inner_text()
    assert p.locator("#seen-address").inner_text() == "127.0.0.1"
    p.locator("nav.nav").get_by_role("link", name="Single sign-on").click()
    p.wait_for_url("**/sso")
    assert "off" in p.locator("#sso-state").inner_text()
    if client is not None:  # the allow list lets the demo model through
        assert client.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "x"}]).choices

    # Screenshots of every page, both widths.
    pages = {
        "overview": "/",
        "projects": "/projects",
        "project": f"/projects/{pid}",
        "usage": "/usage",
        "credit": "/credit",
        "kill-switch": "/kill-switch",
        "audit": "/audit",
        "users": "/users",
        "roles": "/roles",
        "access": "/access",
        "sso": "/sso",
    }
    phone = Pages(browser, srv.base_url, clock, PHONE, owner.ctx.storage_state())
    for name, path in pages.items():
        p.goto(path)
        owner.shot(f"{name}-desktop")
        phone.page.goto(path)
        phone.shot(f"{name}-mobile")
    phone.close()

    # Revoke the key: it stops working.
    p.goto(f"/projects/{pid}")
    p.locator("#keys tbody tr").first.get_by_role("button", name="Revoke").click()
    p.wait_for_url(f"**/projects/{pid}")
    assert "revoked" in p.locator("#flash-slot").inner_text()
    assert p.locator("#keys tbody tr").count() == 0
    if client is not None:
        from openai import AuthenticationError

        deadline = time.monotonic() + 5
        while True:
            try:
                client.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "x"}])
            except AuthenticationError:
                break
            assert time.monotonic() < deadline, "the revoked key still works"
            time.sleep(0.2)

    # A reader, added from the Users page with a one-time password.
    p.goto("/users")
    p.get_by_label("Email").fill("reader@example.com")
    p.get_by_role("button", name="Add user").click()
    p.locator("dialog#secret-dialog").wait_for()
    reader_password = p.input_value("#secret-value")
    p.locator("#secret-done").click()
    reader = Pages(browser, srv.base_url, clock)
    reader.enroll("reader@example.com", reader_password)
    r = reader.page
    assert "reader" in r.locator(".reader-note").inner_text()
    r.goto("/projects")
    assert r.get_by_role("button", name="Create project").count() == 0
    r.goto(f"/projects/{pid}")
    assert r.get_by_role("button", name="Archive project").count() == 0
    assert r.locator("#spend-amount").count() == 0
    r.goto("/users")
    assert r.get_by_role("button", name="Remove").count() == 0
    r.locator("nav.nav").get_by_role("link", name="Roles & groups").click()
    r.wait_for_url("**/roles")
    assert "deployer" in r.locator("#role-table").inner_text()
    assert r.get_by_role("button", name="Create role").count() == 0
    assert r.get_by_role("button", name="Delete").count() == 0
    r.locator("#group-table").get_by_role("link", name="platform").click()
    r.wait_for_url("**/groups/group_*")
    assert r.get_by_role("button", name="Give role").count() == 0
    r.goto("/access")
    assert "allow_list: demo-*" not in r.locator("main").inner_text()  # not a member of that project
    assert r.get_by_role("button", name="Save allowlist").count() == 0
    r.goto("/sso")
    assert "off" in r.locator("#sso-state").inner_text()
    # Even with a valid CSRF token, the server refuses a reader's change.
    token = r.locator("body").get_attribute("hx-headers")
    assert token
    csrf = re.search(r'"X-CSRF-Token": "([^"]+)"', token).group(1)  # type: ignore[union-attr]
    res = r.request.post("/projects", form={"name": "nope", "csrf_token": csrf})
    assert res.status == 403
    res = r.request.post("/roles", form={"role_name": "nope", "csrf_token": csrf})
    assert res.status == 403 and "api.organization.write" in res.text()
    res = r.request.post(
        f"/projects/{pid}/access/models", form={"mode": "deny_list", "model_ids": "demo-echo", "csrf_token": csrf}
    )
    assert res.status == 403
    # A post without the CSRF token is refused for the owner too.
    res = p.request.post("/projects", form={"name": "no token"})
    assert res.status == 403
    res = p.request.post("/access/ip-allowlist", form={"cidrs": "203.0.113.0/24", "confirm_lockout": "on"})
    assert res.status == 403
    p.goto("/projects")
    assert "no token" not in p.content() and "nope" not in p.content()
    p.goto("/access")
    assert p.locator("#org-ip-state").inner_text().startswith("Off")

    # Sign out: the dashboard asks to sign in again.
    p.get_by_role("button", name="Sign out").click()
    p.wait_for_url("**/login")
    assert "signed out" in p.locator(".flash").inner_text()
    p.goto("/projects")
    assert "/login?next=/projects" in p.url

    reader.close()
    bad = [e for e in owner.errors + reader.errors if "Content Security Policy" in e or "Refused" in e]
    assert not bad, bad
    owner.close()
