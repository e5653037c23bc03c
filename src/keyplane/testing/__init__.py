"""Test helpers shipped with the package: the fake OpenAI-compatible upstream (tests and bench use it)."""

from __future__ import annotations

from typing import Any

__all__ = ["Behaviour", "FakeUpstream", "Recorded"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `python -m keyplane.testing.fake_upstream` does not import the module twice.
    if name in __all__:
        from keyplane.testing import fake_upstream

        return getattr(fake_upstream, name)
    raise AttributeError(name)
