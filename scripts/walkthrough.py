"""The newcomer walk-through (run by scripts/walkthrough, which installs what it needs first).

Each step prints what the user types and what they see. Any failure prints the server's log and
exits 1.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import openai
import pyotp

ROOT = Path(__file__).resolve().parents[1]
KEYPLANE = str(ROOT / ".venv" / "bin" / "keyplane")
CHROMIUM = os.environ.get("KEYPLANE_CHROMIUM", "/usr/bin/chromium")
OWNER = "owner@example.com"
T = TypeVar("T")

NODE_CALL = """
import OpenAI from "openai";
const client = new OpenAI({ baseURL: process.env.WALK_BASE_URL, apiKey: process.env.WALK_API_KEY });
const done = await client.chat.completions.create({
  model: "demo-echo", messages: [{ role: "user", content: "hello from Node" }] });
console.log(done.choices[0].message.content);
"""


class Failed(Exception):
    pass


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n== {title}")


def shell(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    say("$ " + " ".join(a if a != KEYPLANE else ".venv/bin/keyplane" for a in args))
    res = subprocess.run(list(args), input=stdin, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    for line in (res.stdout + res.stderr).rstrip().splitlines():
        say("  " + line)
    if res.returncode != 0:
        raise Failed(f"`{' '.join(args[:3])} ...` exited with {res.returncode}")
    return res.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def retry(fn: Callable[[], T], what: str, seconds: float = 60) -> T:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except (httpx.TransportError, openai.APIConnectionError):
            if time.monotonic() > deadline:
                raise Failed(f"{what}: no answer within {seconds:g}s") from None
            time.sleep(0.2)


def sign_in(base: str, password: str, shot: Path) -> str:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            page = browser.new_page(base_url=base, viewport={"width": 1280, "height": 800})
            page.set_default_timeout(20_000)
            say(f"browser: open {base}/login")
            page.goto("/login")
            page.get_by_label("Email").fill(OWNER)
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Continue").click()
            page.wait_for_url("**/login/enroll*")
            secret = page.locator("#totp-secret").inner_text().replace(" ", "")
            say("browser: asked to set up an authenticator app (QR code and setup key shown); entering its code")
            page.get_by_label("Code from the app").fill(pyotp.TOTP(secret).now())
            page.get_by_role("button", name="Turn on and continue").click()
            # The next page is the recovery codes, or the enrollment page again with what went wrong.
            page.wait_for_selector("#recovery-codes, #login-error", timeout=60_000)
            if page.locator("#login-error").count():
                raise RuntimeError("enrolling the authenticator failed: " + page.locator("#login-error").inner_text())
            codes = page.locator("#recovery-codes code").all_inner_texts()
            say(f"browser: shown {len(codes)} recovery codes, once")
            page.locator("#codes-continue").click()
            page.wait_for_url(re.compile(r".*/$"))
            heading = page.locator("h1").first.inner_text().strip()
            page.screenshot(path=str(shot), full_page=True)
            return heading
        finally:
            browser.close()


def main() -> int:
    work = Path(os.environ.get("KEYPLANE_WALKTHROUGH_DIR") or tempfile.mkdtemp(prefix="keyplane-walkthrough-"))
    home = work / "home"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KEYPLANE_", "OPENAI_"))
    }  # a newcomer's shell: no keyplane settings yet
    env["KEYPLANE_HOME"] = str(home)
    port = free_port()
    log_path = work / "serve.log"
    server: subprocess.Popen[bytes] | None = None
    say(f"keyplane walk-through in {work}")
    try:
        step("1. initialize (prints the first keys, once)")
        out = shell(env, KEYPLANE, "init")
        api_key = re.search(r"sk-kp-svc-\S+", out)
        if not api_key:
            raise Failed("`keyplane init` printed no API key")
        key = api_key.group(0)

        step("2. serve, with the built-in demo upstream (no provider key needed)")
        say(f"$ .venv/bin/keyplane serve --port {port} &")
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [KEYPLANE, "serve", "--port", str(port)],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        base = f"http://127.0.0.1:{port}"
        models = retry(
            lambda: httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}), "keyplane serve"
        )
        if models.status_code != 200:
            raise Failed(f"GET /v1/models answered {models.status_code}: {models.text[:300]}")
        say(f"  serving on {base}; models: {', '.join(m['id'] for m in models.json()['data'])}")

        step("3. one call with the official Python SDK")
        say(f'client = OpenAI(base_url="{base}/v1", api_key="{key[:14]}...")')
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key)
        done = client.chat.completions.create(
            model="demo-echo", messages=[{"role": "user", "content": "hello from Python"}]
        )
        say(f"Python SDK: {done.choices[0].message.content}")

        step("4. one call with the official Node SDK")
        res = subprocess.run(
            ["node", "--input-type=module", "-e", NODE_CALL],
            capture_output=True,
            text=True,
            cwd=ROOT / "tests" / "node",
            timeout=120,
            env={**env, "WALK_BASE_URL": f"{base}/v1", "WALK_API_KEY": key},
        )
        if res.returncode != 0:
            raise Failed(f"the Node SDK call failed: {res.stderr.strip()[-800:]}")
        say(f"Node SDK: {res.stdout.strip()}")

        step("5. sign in to the dashboard in Chromium (password, then an authenticator app)")
        password = "walk-" + secrets.token_urlsafe(12)
        shell(env, KEYPLANE, "users", "set-password", OWNER, "--password-stdin", stdin=password + "\n")
        heading = sign_in(base, password, work / "dashboard.png")
        say(f'dashboard: signed in as {OWNER}; the first page is "{heading}" (screenshot: {work / "dashboard.png"})')
        if heading != "Overview":  # the first page after sign-in; an error page is a failed walk-through
            raise Failed(f'the dashboard\'s first page is "{heading}", not the Overview')

        say("\nwalk-through passed")
        return 0
    except Exception as e:  # every failure ends the same way: what failed, and the server's log
        say(f"\nwalk-through FAILED: {type(e).__name__}: {e}")
        if log_path.exists():
            say("--- keyplane serve log ---")
            say(log_path.read_text(errors="replace")[-4000:])
        return 1
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    sys.exit(main())
