"""`keyplane doctor`: the troubleshooting guide as a command.

Checks, in the order a request meets them: is there a key, is it well formed (checksum, stray
whitespace, an OpenAI or admin key by mistake), does the server answer, is the key live (revoked,
expired, suspended, archived project), which project and permissions it has, do those permissions
allow model requests (``api.model.request``: else every model call answers 403), and does ``GET /v1/models``
work. Given an admin key too, it reads the key's, project's and organization's spend limits and the prepaid
credit (read-only admin API) and says which one would refuse model calls with 429 ``insufficient_quota``.
Nothing it sends costs money or reaches an upstream. Every 401/403/429 it meets is explained in plain words
with the fix; a 429 tells quota (waiting does not help) from rate limit (waiting does).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from keyplane import fmt, keys
from keyplane.auth import OPENAI_MARKER

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    skipped: bool = False  # not checked (ok: nothing found wrong, nothing looked at either)


@dataclass
class Report:
    base_url: str
    key: str | None  # masked
    key_source: str | None
    checks: list[Check] = field(default_factory=list)
    key_info: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str, fix: str = "", skipped: bool = False) -> bool:
        self.checks.append(Check(name, ok, detail, fix, skipped))
        return ok

    @property
    def skipped(self) -> list[str]:
        return [c.name for c in self.checks if c.skipped]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "base_url": self.base_url,
            "key": self.key,
            "key_source": self.key_source,
            "key_info": self.key_info,
            "checks": [asdict(c) for c in self.checks],
        }


@dataclass(frozen=True)
class NotAnAPI:
    """An answer that is not JSON (a dashboard page, a proxy's error page...): never printed as it came."""

    content_type: str

    def __str__(self) -> str:
        return f"not a keyplane/OpenAI API answer ({self.content_type or 'no content type'})"


MODEL_REQUEST = "api.model.request"  # the scope every model call needs (chat, responses, embeddings...)


def _get(url: str, key: str, timeout: float) -> tuple[int, dict[str, str], Any]:
    if not url.startswith(("http://", "https://")):
        raise urllib.error.URLError(f"not an http(s) URL: {url}")
    req = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url, headers={"Authorization": f"Bearer {key}", "User-Agent": "keyplane-doctor"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
            status, headers, raw = r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, dict(e.headers.items()), e.read()
    headers = {k.lower(): v for k, v in headers.items()}
    try:
        body = json.loads(raw)
    except ValueError:
        body = NotAnAPI(headers.get("content-type", "").split(";", 1)[0].strip())
    return status, headers, body


def explain(status: int, body: Any, headers: dict[str, str]) -> tuple[str, str]:
    """(what happened, the fix) for an error answer, in plain words."""
    if isinstance(body, NotAnAPI):
        return str(body), (
            "Check the base URL: keyplane's API is its /v1 URL (e.g. http://127.0.0.1:8080/v1); "
            "this answer came from something else (the dashboard, a proxy, another server)."
        )
    err = body.get("error", {}) if isinstance(body, dict) else {}
    err = err if isinstance(err, dict) else {}
    msg, typ, code = str(err.get("message") or body), err.get("type"), err.get("code")
    if status == 401:
        if code == "mismatched_organization":
            return msg, "Remove the OpenAI-Organization header (or OPENAI_ORG_ID), or set it to this keyplane's org."
        if code == "mismatched_project":
            return msg, "Remove the OpenAI-Project header (or OPENAI_PROJECT_ID), or set it to the key's project."
        if code == "project_archived":
            return msg, "Create a key in an active project (`keyplane keys create --project ...`)."
        if "revoked" in msg:
            return msg, "The key is gone for good: ask an administrator for a new key (`keyplane keys create`)."
        if "expired" in msg:
            return msg, "Ask an administrator for a new key, or one with a longer expires_in_seconds."
        if "suspended" in msg:
            return msg, "An administrator can resume it: `keyplane keys resume KEY_ID`."
        return msg, "Check that the key is a live keyplane key, copied whole, sent as `Authorization: Bearer KEY`."
    if status == 403:
        if code == "missing_scope":
            return msg, (
                "The key's permissions do not cover this endpoint: an administrator can widen them "
                "(`keyplane keys permissions KEY_ID SCOPES`) or issue a key with the scope named."
            )
        return msg, "Ask an administrator for access."
    if status == 429:
        if typ == "insufficient_quota" or (code or "").endswith(("quota", "spend_limit_exceeded")):
            return (
                f"Quota: {msg}",
                "Waiting does not help: add credit or raise the spend limit "
                "(an administrator: `keyplane credit grant AMOUNT_USD` / "
                "`keyplane limits set --project ID --spend-limit USD`).",
            )
        wait = headers.get("retry-after-ms")
        wait_s = f"{int(wait) / 1000:g}s" if wait and wait.isdigit() else headers.get("retry-after", "a moment")
        return (
            f"Rate limit: {msg}",
            f"Waiting helps: retry after {wait_s} (the SDKs do so on their own), or "
            "send fewer requests at once; an administrator can raise the key's or project's limits.",
        )
    if status == 404:
        return msg, "Check the base URL: it must end in /v1 (e.g. http://127.0.0.1:8080/v1)."
    if status >= 500:
        return msg, "The gateway or its upstream is failing: check `keyplane serve` logs and the upstream's key."
    return msg, ""


def _key_problems(report: Report, key: str) -> str | None:
    """Local checks, no network. The key to use next (stripped), or None when it cannot work."""
    stripped = key.strip()
    if stripped != key:
        report.add(
            "whitespace",
            False,
            "The key has spaces or a newline around it.",
            "Remove them (a trailing newline often comes from a file or `echo` without -n).",
        )
    if OPENAI_MARKER in stripped or stripped.startswith(("sk-proj-", "sk-svcacct-", "sk-admin-")):
        report.add(
            "format",
            False,
            "This is an OpenAI key, not a keyplane key (sk-kp-...).",
            "Give clients keyplane keys; the OpenAI key belongs on the server (an upstream's api_key_env).",
        )
        return None
    if not keys.looks_like_keyplane_key(stripped):
        report.add(
            "format",
            False,
            "This is not a keyplane key: keyplane keys start with sk-kp-.",
            "Use the key printed by `keyplane keys create` (or the admin API).",
        )
        return None
    kind = keys.parse(stripped)
    if kind is None:
        report.add(
            "checksum",
            False,
            "The key's checksum does not match: it was not copied whole or was changed.",
            "Copy the key again, all of it.",
        )
        return None
    if kind == "admin":
        report.add(
            "format",
            False,
            "This is an admin key: it works on /v1/organization only, not on model calls.",
            "Use a project key (sk-kp-proj-...) or a service-account key (sk-kp-svc-...).",
        )
        return None
    report.add(
        "format", True, f"Well-formed {'project' if kind == 'proj' else 'service-account'} key (checksum valid)."
    )
    return stripped


def diagnose(
    base_url: str, key: str | None, key_source: str | None, timeout: float = 10.0, admin_key: str | None = None
) -> Report:
    base = base_url.rstrip("/")
    report = Report(base, keys.mask(key.strip()) if key else None, key_source)
    if not key:
        report.add(
            "key",
            False,
            "No key given.",
            "Pass --key, or set OPENAI_API_KEY (what the OpenAI SDKs read) or KEYPLANE_API_KEY.",
        )
        return report
    usable = _key_problems(report, key)
    if usable is None:
        return report
    try:
        api, (status, headers, body) = _find_api(base, usable, timeout)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        report.add(
            "server",
            False,
            f"Could not reach {base}: {reason}.",
            "Is keyplane running (`keyplane serve`)? Check the host, port and OPENAI_BASE_URL.",
        )
        return report
    report.add("server", True, f"{base} answers.")
    if api != base:
        report.base_url = base = api
        report.add(
            "base_url",
            True,
            f"The base URL had no /v1: checked {api} (give the OpenAI SDKs that URL, e.g. OPENAI_BASE_URL={api}).",
        )
    if isinstance(body, NotAnAPI):
        what, fix = explain(status, body, headers)
        report.add("key", False, f"GET {base}/keyplane/key: HTTP {status}: {what}.", fix)
        return report
    if status == 200 and isinstance(body, dict):
        report.key_info = body
        p = body.get("project") or {}
        perms = body.get("permissions")
        perms_s = perms if isinstance(perms, str) else ", ".join(perms or [])
        expires = body.get("expires_at")
        report.add(
            "key",
            True,
            f"Key {body.get('id')} ({body.get('name')}) is {body.get('status')}; project "
            f"{p.get('name')} ({p.get('id')}); permissions: {perms_s}"
            + (f"; expires at {expires} (unix time)" if expires else "; does not expire")
            + ".",
        )
        _model_requests(report, body)
    elif status == 404:
        report.add(
            "key",
            True,
            "The server does not tell key details (not keyplane, or an older one); checking with /v1/models only.",
        )
    else:
        what, fix = explain(status, body, headers)
        report.add("key", False, f"HTTP {status}: {what}", fix)
        return report
    status, headers, body = _get(base + "/models", usable, timeout)
    if status == 200 and isinstance(body, dict):
        ids = [m.get("id") for m in body.get("data", []) if isinstance(m, dict)]
        shown = ", ".join(str(i) for i in ids[:8]) + (" ..." if len(ids) > 8 else "")
        report.add("models", True, f"GET /v1/models works: {len(ids)} model(s) available ({shown}).")
    else:
        what, fix = explain(status, body, headers)
        report.add("models", False, f"GET /v1/models: HTTP {status}: {what}", fix)
    if report.key_info is not None:
        _budget(report, base, admin_key.strip() if admin_key else None, timeout)
    return report


def _model_requests(report: Report, info: dict[str, Any]) -> None:
    """Do the key's permissions allow model calls? Read from the key's own scopes: nothing is sent upstream."""
    scopes = info.get("scopes")
    if not isinstance(scopes, list):
        return  # an older keyplane: its key info lists no scopes
    if MODEL_REQUEST in scopes:
        report.add("model_requests", True, f"The key's permissions allow model requests ({MODEL_REQUEST}).")
        return
    perms = info.get("permissions")
    perms_s = perms if isinstance(perms, str) else ", ".join(perms or []) or "none"
    report.add(
        "model_requests",
        False,
        f"The key's permissions ({perms_s}) do not include {MODEL_REQUEST}: every model call (chat completions, "
        "responses, embeddings, images, audio...) answers 403 missing_scope.",
        f"An administrator can widen them, same key: `keyplane keys permissions {info.get('id') or 'KEY_ID'} all`, "
        f"or list {MODEL_REQUEST} among its scopes; or use a key created with them (`keyplane keys create`).",
    )


def _usd(cents: Any) -> str:
    return fmt.usd_cents(cents) if isinstance(cents, int) else "?"


def _spent(micros: Any) -> str:
    """Spend as the 429s write it (rounded up; four decimals under a cent)."""
    return fmt.usd(micros, "up") if isinstance(micros, int) else "?"


def _day(ts: Any) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts)) if isinstance(ts, (int, float)) else "next month"


def _budget(report: Report, base: str, admin_key: str | None, timeout: float) -> None:
    """Spend limits (key, project, organization) and prepaid credit, read with an admin key (GETs only)."""
    info = report.key_info or {}
    project = info.get("project") or {}
    pid, kid = project.get("id"), info.get("id")
    if not admin_key:
        report.add(
            "budget",
            True,
            "Spend limits and prepaid credit not checked: the key cannot read them. Pass --admin-key "
            "(or set KEYPLANE_ADMIN_KEY) to check them too; a model call answering 429 insufficient_quota means "
            "one is used up (waiting does not help).",
            skipped=True,
        )
        return
    org = base + "/organization"
    scopes = [("organization", "organization", org + "/spend_limit")]
    if pid:
        scopes.insert(0, ("project", f"project {project.get('name')} ({pid})", f"{org}/projects/{pid}/spend_limit"))
        if kid:
            scopes.insert(0, ("key", f"key {kid}", f"{org}/projects/{pid}/api_keys/{kid}/spend_limit"))
    problems: list[tuple[str, str]] = []
    notes: list[str] = []
    try:
        for scope, what, url in scopes:
            status, headers, body = _get(url, admin_key, timeout)
            if status == 404:
                continue  # no spend limit set there
            if status != 200 or not isinstance(body, dict):
                why, fix = explain(status, body, headers)
                report.add("budget", False, f"GET {url} with the admin key: HTTP {status}: {why}", fix)
                return
            limit, spent = body.get("threshold_amount"), body.get("spent_micros")
            if not isinstance(spent, int) and isinstance(body.get("spent"), int):  # an older keyplane: whole cents
                spent = body["spent"] * fmt.CENT
            enforcing = (body.get("enforcement") or {}).get("status") == "enforcing"
            notes.append(f"{what}: {_spent(spent)} of {_usd(limit)} this month" + ("" if enforcing else " (inactive)"))
            if enforcing and isinstance(limit, int) and isinstance(spent, int) and spent >= limit * fmt.CENT:
                option = {"key": f" --project {pid} --key {kid}", "project": f" --project {pid}"}.get(scope, "")
                problems.append(
                    (
                        f"The {what} has reached its spend limit: {_spent(spent)} spent of {_usd(limit)} this month, "
                        f"so model calls answer 429 {scope if scope != 'key' else 'api_key'}_spend_limit_exceeded "
                        f"(insufficient_quota) until it resets on {_day(body.get('resets_at'))}.",
                        "Waiting does not help until then: an administrator can raise it "
                        f"(`keyplane limits set{option} --spend-limit USD`).",
                    )
                )
        status, headers, body = _get(org + "/credit_balance", admin_key, timeout)
    except (urllib.error.URLError, OSError) as e:
        report.add("budget", False, f"Could not read the spend limits: {getattr(e, 'reason', e)}.", "Try again.")
        return
    if status == 200 and isinstance(body, dict) and body.get("enforced"):
        available = body.get("available_micros")
        notes.append(f"prepaid credit: {_usd(body.get('available'))} available")
        if isinstance(available, int) and available <= 0:
            problems.append(
                (
                    f"The organization's prepaid credit is used up ({_usd(body.get('used'))} used of "
                    f"{_usd(body.get('granted'))} granted): model calls answer 429 insufficient_quota.",
                    "Waiting does not help: an administrator can add credit (`keyplane credit grant AMOUNT_USD`).",
                )
            )
    for detail, fix in problems:
        report.add("budget", False, detail, fix)
    if not problems:
        report.add(
            "budget",
            True,
            "Spend limits and prepaid credit leave room: "
            + ("; ".join(notes) if notes else "none is set")
            + "."
            + (
                " A model call is refused (429) when the most it may cost does not fit in what is left: it reserves "
                "its output at its max_tokens (or max_completion_tokens, max_output_tokens), else at the model's "
                "largest output, so a call without one may be refused well before the limit is spent."
                if notes
                else ""
            ),
        )


def _find_api(base: str, key: str, timeout: float) -> tuple[str, tuple[int, dict[str, str], Any]]:
    """The API base to use and its answer to /keyplane/key. A base without /v1 is tried with /v1 first (the
    usual slip), then as given (a reverse proxy may map another path to /v1): the first JSON answer wins."""
    bases = [base] if base.endswith("/v1") else [base + "/v1", base]
    answers: list[tuple[str, tuple[int, dict[str, str], Any]]] = []
    error: Exception | None = None
    for b in bases:
        try:
            got = _get(b + "/keyplane/key", key, timeout)
        except (urllib.error.URLError, OSError) as e:
            error = error or e
            continue
        if isinstance(got[2], dict) and got[0] != 404:
            return b, got
        answers.append((b, got))
    for b, got in answers:
        if isinstance(got[2], dict):
            return b, got
    if answers:
        return answers[-1]  # no JSON anywhere: report on the URL as given
    assert error is not None
    raise error
