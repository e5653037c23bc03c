"""The holds table (usage/holds.py): requests under a money control running now, kept where a killed process
leaves them; read back, claimed into the dead writer's journal and counted once by billing's seed."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from keyplane.billing import ledger as ledger_mod
from keyplane.billing.state import period_of
from keyplane.usage import holds as holds_mod
from keyplane.usage.holds import SLOT, Holds, claim, dead_holds, dead_holds_in, read_holds
from keyplane.usage.journal import JournalWriter, try_lock
from keyplane.usage.journal_tail import Tail
from tests.usage.test_journal import rec


def _hold(i: int, cost: int = 1000):
    return msgspec.structs.replace(rec(i), status=0, cost_micros=cost, estimated=True, upstream=None)


def test_hold_release_and_growth_read_back(tmp_path: Path) -> None:
    t = Holds(tmp_path, "w1", initial_slots=2)
    slots = [t.hold(_hold(i)) for i in range(5)]  # past the initial 2: the table doubles
    assert len(set(slots)) == 5 and t.held == 5
    assert os.stat(t.path).st_mode & 0o777 == 0o600
    assert sorted(r.id for r in read_holds(t.path)) == [f"req_{i}" for i in range(5)]
    t.release(slots[1])
    t.release(slots[3])
    got = read_holds(t.path)
    assert sorted(r.id for r in got) == ["req_0", "req_2", "req_4"]
    assert all(r.error == holds_mod.INTERRUPTED and r.cost_micros == 1000 for r in got)
    again = t.hold(_hold(9))  # a freed slot is taken again: the file does not grow
    assert again in (slots[1], slots[3]) and t.path.stat().st_size == 8 * SLOT
    t.close()
    assert t.path.exists()  # still holding: the next start bills them


def test_an_empty_table_is_removed_at_close(tmp_path: Path) -> None:
    t = Holds(tmp_path, "w1")
    t.release(t.hold(_hold(1)))
    t.close()
    assert not t.path.exists()


def test_a_torn_slot_and_an_oversized_model_name(tmp_path: Path) -> None:
    t = Holds(tmp_path, "w1", initial_slots=4)
    a = t.hold(_hold(1))
    t.hold(msgspec.structs.replace(_hold(2), model="m" * 5000))  # truncated to fit its slot, still billed
    t.close()
    data = bytearray(t.path.read_bytes())
    data[a * SLOT + 12] ^= 0xFF  # a kill in the middle of the copy: the CRC fails
    t.path.write_bytes(bytes(data))
    got = read_holds(t.path)
    assert [r.id for r in got] == ["req_2"] and got[0].cost_micros == 1000 and len(got[0].model or "") == 64


def test_a_table_that_cannot_grow_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = Holds(tmp_path, "w1", initial_slots=1)
    t.hold(_hold(1))

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(holds_mod.os, "posix_fallocate", full)
    with pytest.raises(holds_mod.HoldsUnavailable):
        t.hold(_hold(2))
    assert [r.id for r in read_holds(t.path)] == ["req_1"]


def _dead_writer(folder: Path, journaled: list[int], held: list[tuple[int, int]]) -> str:
    """A writer that journaled ``journaled`` and died holding ``held`` ((i, cost)): its lock released."""
    w = JournalWriter(folder)
    w.open()
    for i in journaled:
        w.append(rec(i))
    t = Holds(folder, w.writer)
    for i, cost in held:
        t.hold(_hold(i, cost))
    t.close()
    w.close()
    w.release()
    return w.writer


def test_a_live_writers_holds_are_not_dead_holds(tmp_path: Path) -> None:
    w = JournalWriter(tmp_path)
    w.open()
    t = Holds(tmp_path, w.writer)
    t.hold(_hold(1))
    assert dead_holds(tmp_path, w.writer) == [] and dead_holds_in(tmp_path) == {}
    w.close()
    w.release()  # the process is gone: its lock is free
    assert [r.id for r in dead_holds(tmp_path, w.writer)] == ["req_1"]
    t.close()


def test_claim_journals_the_holds_after_the_writers_records(tmp_path: Path) -> None:
    writer = _dead_writer(tmp_path, [1, 2], [(2, 5000), (3, 7000)])  # req_2 finished; its slot not freed yet
    fd = try_lock(tmp_path, writer, create=False)
    assert fd is not None
    try:
        claimed = claim(tmp_path, writer)
    finally:
        os.close(fd)
    assert [r.id for r in claimed] == ["req_2", "req_3"]
    assert not (tmp_path / f"{writer}.holds").exists()
    got = Tail(tmp_path, writer, final=True).read(100)
    assert [(r.id, r.status) for r in got] == [("req_1", 200), ("req_2", 200), ("req_2", 0), ("req_3", 0)]


async def test_the_seed_counts_a_dead_writers_holds_once(tmp_path: Path, engine) -> None:
    """A hold whose request finished (its record journaled, its slot not freed yet) is counted as finished; the
    others at their reservations."""
    folder = tmp_path / "journal"
    folder.mkdir()
    writer = _dead_writer(folder, [1], [(1, 99_999), (2, 5000)])
    period = period_of(rec(1).t)
    snap = await ledger_mod.snapshot(engine, period, folder, None)
    assert snap.held == {writer}
    assert snap.spent[f"{period}:project:proj_1"] == rec(1).cost_micros + 5000


def test_a_table_without_room_at_start_is_retried_and_a_closed_one_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(holds_mod.os, "posix_fallocate", full)
    t = Holds(tmp_path, "w1", initial_slots=2)  # starts all the same: requests under no money control are served
    with pytest.raises(holds_mod.HoldsUnavailable):
        t.hold(_hold(1))
    monkeypatch.undo()  # room again
    slot = t.hold(_hold(1))
    assert [r.id for r in read_holds(t.path)] == ["req_1"]
    t.release(slot)
    t.close()
    with pytest.raises(holds_mod.HoldsUnavailable):
        t.hold(_hold(2))  # a request admitted while the process stops
    t.release(slot)  # a late release is harmless


def test_a_file_system_without_fallocate_gets_its_zeros_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(holds_mod.os, "posix_fallocate", unsupported)
    t = Holds(tmp_path, "w1", initial_slots=2)
    slots = [t.hold(_hold(i)) for i in range(3)]  # grown past 2 the same way
    assert t.path.stat().st_size == 4 * SLOT and len(set(slots)) == 3
    assert sorted(r.id for r in read_holds(t.path)) == ["req_0", "req_1", "req_2"]
