"""--verify and --revoke against a small real aiohttp server implementing the two admin endpoints
(lookup by SHA-256, revoke), which records everything it receives."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from keyplane import keys
from keyplane.scan.findings import Finding, ScanError
from keyplane.scan.rules import RULES_BY_ID
from keyplane.scan.verify import Gateway, GatewayError, verify
from tests.scan.helpers import Repo, cli, openai_project


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeGateway:
    admin_key: str
    keys_by_sha: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    url: str = ""
    redirect: bool = False
    extra: list[dict[str, Any]] = field(default_factory=list)  # answers outside the contract

    def add(self, key: str, key_id: str, status: str) -> None:
        self.keys_by_sha[keys.sha256_hex(key)] = {
            "id": key_id,
            "project_id": "proj_demo" if key_id != "key_admin" else None,
            "kind": keys.parse(key),
            "status": status,
        }

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.admin_key}"

    async def _record(self, request: web.Request) -> web.Response | None:
        self.received.append(Received(request.method, request.path, dict(request.headers), await request.read()))
        if self.redirect:
            raise web.HTTPTemporaryRedirect("http://127.0.0.1:9/elsewhere")
        if not self._authorized(request):
            error = {"error": {"message": "Incorrect API key provided: sk-kp-ad***", "type": "invalid_request_error"}}
            return web.json_response(error, status=401)
        return None

    async def lookup(self, request: web.Request) -> web.Response:
        if (refused := await self._record(request)) is not None:
            return refused
        asked = json.loads(self.received[-1].body)["sha256"]
        data = [{"sha256": h, **self.keys_by_sha[h]} for h in asked if h in self.keys_by_sha]
        return web.json_response({"object": "list", "data": data + self.extra})

    async def revoke(self, request: web.Request) -> web.Response:
        if (refused := await self._record(request)) is not None:
            return refused
        key_id = request.match_info["key_id"]
        for record in self.keys_by_sha.values():
            if record["id"] == key_id:
                record["status"] = "revoked"
                return web.json_response({"object": "organization.project.api_key", **record})
        return web.json_response({"error": {"message": "No such key"}}, status=404)

    def revocations(self) -> list[tuple[str, str]]:
        return [
            (r.path.split("/")[-2], json.loads(r.body)["reason"]) for r in self.received if r.path.endswith("/revoke")
        ]


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    fake = FakeGateway(admin_key=keys.generate("admin"))
    app = web.Application()
    app.router.add_post("/v1/organization/api_keys/lookup", fake.lookup)
    app.router.add_post("/v1/organization/api_keys/{key_id}/revoke", fake.revoke)
    loop = asyncio.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        sock.close()


def _leaky_repo(tmp_path: Path) -> tuple[Repo, dict[str, str]]:
    planted = {
        "live": keys.generate("proj"),
        "revoked": keys.generate("svc"),
        "unknown": keys.generate("proj"),
        "suspended": keys.generate("admin"),
        "openai": openai_project(),
    }
    repo = Repo(tmp_path / "r")
    repo.commit(
        "config",
        **{
            "deploy__.env": f"A={planted['live']}\nB={planted['revoked']}\nOPENAI_API_KEY={planted['openai']}\n",
            "notes.txt": f"old: {planted['unknown']}\nops: {planted['suspended']}\n",
        },
    )
    return repo, planted


def _never_sent_a_key(gateway: FakeGateway, planted: dict[str, str]) -> None:
    for r in gateway.received:
        everything = r.body + r.path.encode() + json.dumps(r.headers).encode()
        for value in planted.values():
            assert value.encode() not in everything
            assert value[11:30].encode() not in everything  # nor a piece of one


def test_verify_and_revoke_sends_only_hashes(tmp_path: Path, gateway: FakeGateway) -> None:
    repo, planted = _leaky_repo(tmp_path)
    gateway.add(planted["live"], "key_live", "active")
    gateway.add(planted["revoked"], "key_old", "revoked")
    gateway.add(planted["suspended"], "key_admin", "suspended")
    env = {"KEYPLANE_ADMIN_KEY": gateway.admin_key}
    result = cli("--json", "--revoke", "--gateway", gateway.url, str(repo.path), env=env)
    assert result.exit_code == 1, result.output  # findings stay findings

    lookups = [r for r in gateway.received if r.path.endswith("/lookup")]
    assert len(lookups) == 1
    sent = json.loads(lookups[0].body)
    keyplane_keys = [planted[k] for k in ("live", "revoked", "unknown", "suspended")]
    assert sent == {"sha256": sorted(keys.sha256_hex(k) for k in keyplane_keys)}  # the OpenAI key is not asked
    assert all(r.headers["Authorization"] == f"Bearer {gateway.admin_key}" for r in gateway.received)
    _never_sent_a_key(gateway, planted)

    assert sorted(gateway.revocations()) == [
        ("key_admin", "leaked: notes.txt:2"),
        ("key_live", "leaked: deploy/.env:1"),
    ]
    verdicts = {(f["path"], f["line"]): f.get("verification") for f in json.loads(result.stdout)["findings"]}
    assert verdicts["deploy/.env", 1]["status"] == "revoked" and verdicts["deploy/.env", 1]["revoked_now"] is True
    assert verdicts["deploy/.env", 2] == {
        "status": "revoked",
        "key_id": "key_old",
        "project_id": "proj_demo",
        "kind": "svc",
        "revoked_now": False,
    }
    assert verdicts["deploy/.env", 3] is None  # OpenAI key: advice to rotate at the provider instead
    assert verdicts["notes.txt", 1] == {"status": "unknown"}
    assert verdicts["notes.txt", 2]["revoked_now"] is True
    assert gateway.admin_key not in result.output


def test_verify_without_revoke_changes_nothing(tmp_path: Path, gateway: FakeGateway) -> None:
    repo, planted = _leaky_repo(tmp_path)
    gateway.add(planted["live"], "key_live", "active")
    result = cli("--verify", "--gateway", gateway.url, "--admin-key", gateway.admin_key, str(repo.path))
    assert result.exit_code == 1
    assert gateway.revocations() == []
    assert "active (key_live in proj_demo)" in result.stdout
    assert "unknown to the gateway" in result.stdout
    assert "rotate it at the provider" in result.stdout
    # This gateway has no provider connector: the OpenAI key stays a finding, unverified, and that is said.
    assert "provider keys were not verified" in result.stderr


def test_revoke_reason_names_the_commit_in_history_scans(tmp_path: Path, gateway: FakeGateway) -> None:
    repo = Repo(tmp_path / "r")
    key = keys.generate("proj")
    commit = repo.commit("leak", **{"k.txt": f"x\n{key}\n"})
    repo.commit("clean", **{"k.txt": "x\n"})
    gateway.add(key, "key_hist", "active")
    env = {"KEYPLANE_ADMIN_KEY": gateway.admin_key}
    assert cli("--history", "--revoke", "--gateway", gateway.url, str(repo.path), env=env).exit_code == 1
    assert gateway.revocations() == [("key_hist", f"leaked: k.txt:2@{commit}")]


def test_refused_admin_key(tmp_path: Path, gateway: FakeGateway) -> None:
    repo, _ = _leaky_repo(tmp_path)
    wrong = keys.generate("admin")
    result = cli("--verify", "--gateway", gateway.url, "--admin-key", wrong, str(repo.path))
    assert result.exit_code == 2
    assert "refused the admin key (HTTP 401)" in result.stderr and "Incorrect API key" in result.stderr
    assert wrong not in result.output
    assert "deploy/.env" in result.stdout  # the report is printed all the same


def test_unreachable_gateway(tmp_path: Path) -> None:
    repo, _ = _leaky_repo(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    result = cli("--verify", "--gateway", f"http://127.0.0.1:{port}", "--admin-key", "k", str(repo.path))
    assert result.exit_code == 2
    assert "cannot reach the gateway" in result.stderr and "Traceback" not in result.output


def test_redirects_are_refused(tmp_path: Path, gateway: FakeGateway) -> None:
    gateway.redirect = True
    client = Gateway(gateway.url, gateway.admin_key)
    with pytest.raises(GatewayError, match="HTTP 307"):
        client.lookup(["a" * 64])
    assert len(gateway.received) == 1  # not followed


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"sha256": "f" * 64, "id": "key_x", "status": "active"}, "not asked for"),
        ({"sha256": "not-hex", "id": "key_x", "status": "active"}, "valid sha256"),
        ("a string", "not an object"),
    ],
)
def test_answers_outside_the_contract_are_errors(tmp_path: Path, gateway: FakeGateway, entry, message) -> None:
    repo, _ = _leaky_repo(tmp_path)
    gateway.extra.append(entry)
    result = cli("--revoke", "--gateway", gateway.url, "--admin-key", gateway.admin_key, str(repo.path))
    assert result.exit_code == 2 and message in result.stderr
    assert gateway.revocations() == []


def test_unknown_status_is_an_error(gateway: FakeGateway) -> None:
    key = keys.generate("proj")
    gateway.add(key, "key_x", "weird")
    finding = Finding(RULES_BY_ID["keyplane-key"], "x", 1, 1, None, key)
    with pytest.raises(GatewayError, match="known status"):
        verify([finding], Gateway(gateway.url, gateway.admin_key), revoke=True)


def test_nothing_is_sent_without_keyplane_keys(gateway: FakeGateway) -> None:
    openai = Finding(RULES_BY_ID["openai-project-key"], "x", 1, 1, None, openai_project())
    result = verify([openai], Gateway(gateway.url, gateway.admin_key), revoke=True)
    assert result.known == {} and gateway.received == []


def test_gateway_rejects_bad_urls_and_empty_keys() -> None:
    with pytest.raises(ScanError, match="http"):
        Gateway("file:///etc/passwd", "k")
    with pytest.raises(ScanError, match="admin key"):
        Gateway("http://127.0.0.1", "   ")
    assert "sk-secret-admin" not in repr(Gateway("http://127.0.0.1:1", "sk-secret-admin"))
