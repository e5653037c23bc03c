"""Billing.current (billing/engine.py): a key the snapshot serves is never admitted under limits older than it, and
admission does not depend on billing's background step to catch up: with that step stuck (a slow batch poll, a
hung alert), a control-plane change still lets the next request through at once, under the limits as they are
now. (Round 20 of the red team found the hole: tests/redteam/test_wk50_round20.py.)"""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.billing.conftest import billing_of, new_key, set_spend_limit
from tests.support import RunningServer

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def _stop_background(b) -> None:  # type: ignore[no-untyped-def]
    task = b._task
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _restore(b, cfg) -> None:  # type: ignore[no-untyped-def]
    b.cfg = cfg


def test_admission_reloads_the_limits_itself_when_the_background_step_is_stuck(gw: RunningServer) -> None:
    b = billing_of(gw)
    gw.call(_stop_background(b))  # billing's background step runs no more: nothing else would reload the limits
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.api_key, max_retries=0)
    client.chat.completions.create(**CHAT)
    before = b.cfg
    new_key(gw)  # control-plane changes: the snapshot moves on
    set_spend_limit(gw, 0)  # a limit that refuses everything
    gw.call(_restore(b, before))  # made by another instance: this one's limits are still the ones before them
    assert b.behind()
    with pytest.raises(openai.RateLimitError) as e:  # held to the limit set, not a 503 after 2 s
        client.chat.completions.create(**CHAT)
    assert e.value.code == "project_spend_limit_exceeded"
    assert not b.behind()
