"""The domain's refusals (keyplane.domain) answer with the very body errors.py builds for their kind."""

from __future__ import annotations

import pytest

from keyplane import domain, errors


@pytest.mark.parametrize(
    ("refusal", "expected"),
    [
        (domain.Invalid("bad", param="name", code="invalid_value"), errors.bad_request("bad", "name", "invalid_value")),
        (domain.Invalid("bad"), errors.bad_request("bad")),
        (domain.NotFound("gone", param="key_id"), errors.not_found("gone", param="key_id")),
        (domain.Conflict("taken", code="user_exists"), errors.conflict("taken", code="user_exists")),
        (domain.Forbidden("no", code="insufficient_permissions"), errors.forbidden("no", "insufficient_permissions")),
    ],
)
def test_each_kind_maps_to_its_http_error(refusal: domain.DomainError, expected: errors.APIError) -> None:
    got = domain.api_error(refusal)
    assert (got.status, got.body(), got.headers) == (expected.status, expected.body(), expected.headers)
    assert domain.cli_message(refusal) == expected.message


def test_the_admin_app_answers_a_refusal_like_an_api_error() -> None:
    import asyncio

    from starlette.requests import Request

    from keyplane.admin import _domain_error

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    r = asyncio.run(_domain_error(Request(scope), domain.NotFound("No user.", param="user_id")))
    assert r.status_code == 404 and r.body == errors.not_found("No user.", param="user_id").body()
