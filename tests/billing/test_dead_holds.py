"""A worker of this host that dies while this process runs (or a fleet instance restarted on counters Redis kept):
its holds (usage/holds.py), the requests under a money control it had running, are claimed by the next orphan
scan, billed at their reservations and added to the budget counters once; the limit is then sold no further."""

from __future__ import annotations

from collections.abc import Callable

from openai import OpenAI

from keyplane.usage import journal_folder
from keyplane.usage.holds import Holds
from keyplane.usage.journal import JournalWriter, Record
from tests.billing.conftest import COST, billing_of, flush, set_spend_limit
from tests.support import RunningServer

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}  # COST each
N = 5


def _status(client: OpenAI) -> int:
    try:
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    except Exception as e:
        return int(getattr(e, "status_code", -1))
    return 200


def test_a_writer_that_dies_meanwhile_has_its_holds_counted_once(make_gateway: Callable[..., RunningServer]) -> None:
    srv = make_gateway()
    set_spend_limit(srv, N * COST // 10_000)
    rt = srv.app.runtime
    folder = journal_folder(rt.settings)
    dead = JournalWriter(folder)
    dead.open()
    holds = Holds(folder, dead.writer)
    for i in range(2):  # two requests it had running against the project's limit
        holds.hold(
            Record(
                f"req_dead{i}", rt.clock.now(), rt.snapshot.org_id, srv.project_id, "key_dead", None,
                "gpt-4o-mini", None, "completions", "/v1/chat/completions", 0, cost_micros=COST, estimated=True,
            )
        )  # fmt: skip
    holds.close()
    dead.close()
    dead.release()  # its process is gone
    applier = rt.features.usage_applier
    assert applier is not None
    assert srv.call(applier.replay_orphans()) == 2
    assert srv.call(applier.replay_orphans()) == 0  # claimed once: its files are gone
    b = billing_of(srv)
    assert srv.call(b.spent("project", srv.project_id)) == (2 * COST, 0)
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    assert [_status(client) for _ in range(N - 1)] == [200] * (N - 2) + [429]
    flush(srv)
    assert srv.call(b.spent("project", srv.project_id))[0] == N * COST
