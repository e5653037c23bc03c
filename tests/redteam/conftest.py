"""The red-team review's findings (issue #12 round 2), kept as regression tests: each failed while its hole
was open. A gateway on the project's fake upstream and template home, in-process limiter."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from keyplane.testing import FakeUpstream
from tests.billing.conftest import config
from tests.proxy.conftest import make_gateway  # noqa: F401 - the fixture, shared
from tests.support import RunningServer


@pytest.fixture
def make_gw(make_gateway: Callable[..., RunningServer], fake: FakeUpstream) -> Callable[..., RunningServer]:  # noqa: F811
    def make(extra: str = "", config_text: str | None = None, **env: str) -> RunningServer:
        return make_gateway(config_text if config_text is not None else config(fake, extra), **env)

    return make
