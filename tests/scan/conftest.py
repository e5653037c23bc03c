from __future__ import annotations

import pytest

from tests.scan.helpers import git_env


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """Git, in the tests and in the scanner they run, ignores the machine's git configuration."""
    for name, value in git_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KEYPLANE_ADMIN_KEY", raising=False)
