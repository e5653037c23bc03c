"""The flat settings of dashboard SSO with OpenID Connect (docs/sso-and-workload-identity.md)."""

from __future__ import annotations

from dataclasses import dataclass

from keyplane.configspec import setting


@dataclass(frozen=True, kw_only=True)
class SsoSettings:
    sso_issuer: str = setting(
        "",
        "OpenID Connect issuer URL for dashboard sign-in (authorization code + PKCE). Empty: no SSO; "
        "password + TOTP always stays available.",
    )
    sso_client_id: str = setting("", "The dashboard's client id at the SSO issuer.")
    sso_client_secret_env: str = setting(
        "KEYPLANE_SSO_CLIENT_SECRET",
        "Name of the environment variable holding the client secret (never in keyplane.toml).",
    )
    sso_groups_claim: str = setting("groups", "ID token claim listing the user's groups.")
    sso_role_map: str = setting(
        "",
        "Comma-separated group=role pairs (role: owner or reader), e.g. `platform=owner,eng=reader`. A user "
        "in no mapped group is refused; the highest role wins and is applied at every sign-in.",
    )
    sso_create_users: bool = setting(
        False,
        "Create a dashboard user at the first SSO sign-in (just in time); off: only existing users.",
    )
