"""A small OpenID Connect provider for tests (no internet): discovery, JWKS, and tokens it signs.

    with FakeOIDC() as idp:                 # serves http://127.0.0.1:<port>/ in a daemon thread
        token = idp.sign({"sub": "system:serviceaccount:ci:runner", "aud": "keyplane"})
        idp.rotate()                        # a new signing key (new kid); the old one stays in the JWKS
        idp.retire_old_keys()               # only the newest key in the JWKS

Keys are RSA 2048 (RS256) made at start; ``sign`` fills iss, iat and exp unless given, and can sign with
any header (``headers=``) or key (``key=``), which the tests use to forge tokens.

For SSO it is also an authorization server (code flow + PKCE S256, client_secret_post or Basic): /authorize
signs in ``next_user`` (claims: sub, email, groups...) without asking and redirects back with a code; /token
checks the code, the redirect_uri, the client's secret and the PKCE verifier, then returns an ID token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


class _Key:
    def __init__(self) -> None:
        self.kid = uuid.uuid4().hex[:16]
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        d: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        d.update(kid=self.kid, alg="RS256", use="sig")
        return d


class FakeOIDC:
    def __init__(self) -> None:
        self.keys: list[_Key] = [_Key()]
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self.issuer = ""
        self.client_id = "keyplane-dashboard"
        self.client_secret = secrets.token_urlsafe(24)
        self.next_user: dict[str, Any] = {
            "sub": "user-1",
            "email": "alice@example.com",
            "email_verified": True,
            "groups": ["platform"],
        }
        self.codes: dict[str, dict[str, Any]] = {}
        self.token_errors: list[str] = []

    # --- tokens --------------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys]}

    def sign(
        self,
        claims: dict[str, Any],
        *,
        key: _Key | None = None,
        headers: dict[str, Any] | None = None,
        algorithm: str = "RS256",
        ttl: int = 300,
    ) -> str:
        k = key or self.keys[-1]
        now = int(time.time())
        body = {"iss": self.issuer, "iat": now, "exp": now + ttl, **claims}
        return jwt.encode(body, k.private, algorithm=algorithm, headers={"kid": k.kid, **(headers or {})})

    def rotate(self) -> None:
        self.keys.append(_Key())

    def retire_old_keys(self) -> None:
        self.keys = self.keys[-1:]

    # --- HTTP ----------------------------------------------------------------------------------

    def _document(self, path: str) -> dict[str, Any] | None:
        if path == "/.well-known/openid-configuration":
            return {
                "issuer": self.issuer,
                "jwks_uri": f"{self.issuer}/jwks",
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
            }
        if path == "/jwks":
            return self.jwks()
        return None

    def _authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if (
            query.get("client_id") != self.client_id
            or query.get("response_type") != "code"
            or query.get("code_challenge_method") != "S256"
            or not query.get("code_challenge")
            or "openid" not in query.get("scope", "").split()
        ):
            return 400, {}, b"bad authorization request"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "redirect_uri": query.get("redirect_uri", ""),
            "nonce": query.get("nonce"),
            "challenge": query["code_challenge"],
            "claims": dict(self.next_user),
        }
        sep = "&" if "?" in query.get("redirect_uri", "") else "?"
        target = query.get("redirect_uri", "") + sep + urlencode({"code": code, "state": query.get("state", "")})
        return 302, {"location": target}, b""

    def _token(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            client_id, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
        grant = self.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        problems = [
            why
            for why, bad in (
                ("unknown or used code", grant is None),
                (
                    "wrong client",
                    client_id != self.client_id or not hmac.compare_digest(secret or "", self.client_secret),
                ),
                ("redirect_uri differs", grant is not None and form.get("redirect_uri") != grant["redirect_uri"]),
                ("PKCE verifier does not match", grant is not None and challenge != grant["challenge"]),
            )
            if bad
        ]
        if problems or grant is None:
            self.token_errors.extend(problems)
            return 400, {"error": "invalid_grant", "error_description": "; ".join(problems)}
        claims = {**grant["claims"], "aud": self.client_id}
        if grant["nonce"]:
            claims["nonce"] = grant["nonce"]
        return 200, {
            "access_token": secrets.token_urlsafe(16),
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": self.sign(claims),
        }

    def start(self) -> FakeOIDC:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, headers: dict[str, str], data: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                owner.requests.append(self.path)
                n = min(int(self.headers.get("content-length") or 0), 65536)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(n).decode()).items()}
                if self.path != "/token":
                    self._answer(404, {}, b"{}", "application/json")
                    return
                status, body = owner._token(form, self.headers.get("authorization"))
                self._answer(status, {"cache-control": "no-store"}, json.dumps(body).encode(), "application/json")

            def do_GET(self) -> None:
                owner.requests.append(self.path)
                parts = urlsplit(self.path)
                if parts.path == "/authorize":
                    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                    status, headers, data = owner._authorize(query)
                    self._answer(status, headers, data, "text/plain")
                    return
                doc = owner._document(self.path.split("?", 1)[0])
                data = json.dumps(doc).encode() if doc is not None else b'{"error":"not_found"}'
                self.send_response(200 if doc is not None else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-oidc").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeOIDC:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
