from __future__ import annotations

from collections.abc import Iterator

import pytest

from keyplane.testing.fake_provider import FakeProvider, RunningFake

PROJ_SECRET = "sk-proj-" + "a" * 40 + "WXYZ"
SVC_SECRET = "sk-svcacct-" + "b" * 40 + "QRST"


def build_org(fake: FakeProvider) -> None:
    """Two projects (one the default), three users (one departs later), keys of users and of a service account."""
    fake.add_project("proj_default", "Default project")
    fake.add_project("proj_data", "Data")
    fake.add_project("proj_web", "Web")
    alice = fake.add_user("user_alice", "alice@example.com", "owner")
    fake.add_user("user_bob", "bob@example.com")
    carol = {"object": "organization.user", "id": "user_carol", "email": "carol@example.com"}  # not a member
    sa = fake.add_service_account("proj_data", "svc_etl", "etl")
    fake.add_service_account("proj_web", "svc_idle", "idle")
    fake.add_key("proj_data", "key_data1", PROJ_SECRET, user=alice, last_used_at=1_800_000_000)
    fake.add_key("proj_data", "key_etl", SVC_SECRET, service_account=sa, last_used_at=1_800_000_000)
    fake.add_key("proj_data", "key_old", "sk-proj-" + "c" * 40 + "OLD1", user=alice, last_used_at=None)
    fake.add_key("proj_default", "key_dflt", "sk-proj-" + "d" * 40 + "DFLT", user=carol, last_used_at=1_800_000_000)
    fake.admin_keys.append(
        {
            "object": "organization.admin_api_key",
            "id": "admin_1",
            "name": "ops",
            "redacted_value": "sk-admin-****abcd",
            "created_at": 1_700_000_000,
            "expires_at": None,
            "last_used_at": None,
            "owner": {"type": "user", "id": "user_alice"},
        }
    )


@pytest.fixture
def fake_provider() -> Iterator[RunningFake]:
    fake = FakeProvider()
    build_org(fake)
    running = RunningFake(fake)
    try:
        yield running
    finally:
        running.stop()
