"""The red-team review's findings (issue #12 round 2), kept as regression tests: each failed while its hole
was open. A gateway on the project's fake upstream and template home, in-process limiter."""
from __future__ import annotations

import json
import shutil

import pytest

from tests.billing.conftest import config
from tests.support import make_settings, start_server


@pytest.fixture
def make_gw(template_home, tmp_path, fake):
    started = []

    def make(extra: str = "", config_text: str | None = None, **env: str):
        home = tmp_path / f"home{len(started)}"
        shutil.copytree(template_home, home)
        init = json.loads((home / "init.json").read_text())
        text = config_text if config_text is not None else config(fake, extra)
        settings = make_settings(home, "", config_text=text, **env)
        srv = start_server(settings, init)
        started.append(srv)
        return srv

    yield make
    for s in started:
        s.stop()
