"""The usage journal: framing, torn and corrupt records, segments, locks, the applied position."""

from __future__ import annotations

import os

import pytest

from keyplane.usage.journal import (
    JournalWriter,
    Record,
    encode_frame,
    parse_frames,
    read_applied,
    segments_of,
    try_lock,
    writers_in,
)
from keyplane.usage.journal_tail import Tail


def rec(i: int, **kw) -> Record:
    d = dict(
        id=f"req_{i}",
        t=1_800_000_000.0 + i,
        org_id="org_1",
        project_id="proj_1",
        key_id="key_1",
        user_id="user_1",
        model="gpt-4o-mini",
        upstream="fake",
        kind="completions",
        endpoint="/v1/chat/completions",
        status=200,
        input_tokens=10 + i,
        cached_tokens=2,
        output_tokens=5,
        cost_micros=100 + i,
        cost_input_micros=60,
        latency_ms=12.5,
        ttft_ms=3.0,
    )
    d.update(kw)
    return Record(**d)


def test_frames_round_trip():
    frames = b"".join(encode_frame(rec(i)) for i in range(3))
    out, pos, bad = parse_frames(frames)
    assert [r.id for r, _ in out] == ["req_0", "req_1", "req_2"] and pos == len(frames) and not bad
    assert out[1][0] == rec(1)


def test_incomplete_and_corrupt_frames_stop_parsing():
    good = encode_frame(rec(1))
    out, pos, bad = parse_frames(good + encode_frame(rec(2))[:-3])
    assert len(out) == 1 and pos == len(good) and not bad  # incomplete: wait for more
    flipped = bytearray(encode_frame(rec(2)))
    flipped[-1] ^= 0xFF
    out, pos, bad = parse_frames(good + bytes(flipped))
    assert len(out) == 1 and pos == len(good) and bad  # CRC mismatch


def test_old_records_decode_after_fields_are_added():
    """array_like with defaults: a journal written before a new trailing field still reads."""
    import msgspec

    short = msgspec.msgpack.encode(["req_x", 1.0, None, None, None, None, None, None, "completions", "/v1/x", 200])
    r = msgspec.msgpack.decode(short, type=Record)
    assert r.id == "req_x" and r.input_tokens == 0 and r.error is None


def test_writer_and_live_tail(tmp_path):
    w = JournalWriter(tmp_path, fsync="never")
    w.open()
    tail = Tail(tmp_path, w.writer, final=False, live=w)
    for i in range(5):
        w.append(rec(i))
    got = tail.read(3)
    assert [r.id for r in got] == ["req_0", "req_1", "req_2"]
    tail.commit()
    assert [r.id for r in tail.read(100)] == ["req_3", "req_4"]
    tail.commit()
    assert tail.read(100) == [] and tail.at_end()
    # The position survives a restart of the reader.
    again = Tail(tmp_path, w.writer, final=False, live=w)
    assert again.read(100) == []
    w.close()
    w.release()


def test_segments_rotate_and_applied_ones_are_deleted(tmp_path):
    w = JournalWriter(tmp_path, fsync="interval", segment_bytes=400)
    w.open()
    tail = Tail(tmp_path, w.writer, final=False, live=w)
    for i in range(20):
        w.append(rec(i))
    w.sync()
    assert len(segments_of(tmp_path, w.writer)) > 3
    got = tail.read(1000)
    assert [r.id for r in got] == [f"req_{i}" for i in range(20)]
    tail.commit()
    assert segments_of(tmp_path, w.writer) == [w.segment]  # only the segment being written remains
    w.append(rec(20))
    assert [r.id for r in tail.read(10)] == ["req_20"]
    w.close()
    w.release()


def test_torn_last_record_of_a_dead_writer_is_dropped(tmp_path):
    w = JournalWriter(tmp_path, fsync="always")
    w.open()
    for i in range(3):
        w.append(rec(i))
    w.close()
    w.release()
    seg = tmp_path / f"{w.writer}.{w.segment:08d}.seg"
    with open(seg, "ab") as f:  # a crash in the middle of write()
        f.write(encode_frame(rec(3))[:11])
    live = Tail(tmp_path, w.writer, final=False)
    assert len(live.read(100)) == 3 and not live.at_end()  # a live writer's tail would wait
    dead = Tail(tmp_path, w.writer, final=True)
    assert [r.id for r in dead.read(100)] == ["req_0", "req_1", "req_2"]
    dead.commit()
    assert dead.dropped_bytes == 11 and dead.at_end()
    assert read_applied(tmp_path, w.writer).offset == seg.stat().st_size


def test_corrupt_record_drops_the_rest_of_its_segment_only(tmp_path):
    w = JournalWriter(tmp_path, fsync="never", segment_bytes=1)  # one record per segment
    w.open()
    for i in range(3):
        w.append(rec(i))
    w.close()
    w.release()
    first = tmp_path / f"{w.writer}.00000001.seg"
    data = bytearray(first.read_bytes())
    data[-2] ^= 0x55
    first.write_bytes(bytes(data))
    tail = Tail(tmp_path, w.writer, final=True)
    assert [r.id for r in tail.read(100)] == ["req_1", "req_2"]


def test_lock_tells_live_from_dead_writers(tmp_path):
    w = JournalWriter(tmp_path, fsync="never")
    w.open()
    w.append(rec(1))
    assert writers_in(tmp_path) == {w.writer}
    assert try_lock(tmp_path, w.writer, create=True) is None  # alive
    w.close()
    w.release()  # the process "died": its flock is gone
    fd = try_lock(tmp_path, w.writer, create=True)
    assert fd is not None
    assert try_lock(tmp_path, w.writer, create=True) is None  # claimed by us now
    os.close(fd)


def test_append_after_close_raises_oserror(tmp_path):
    w = JournalWriter(tmp_path, fsync="never")
    w.open()
    w.close()
    with pytest.raises(OSError):
        w.append(rec(1))
    w.release()


def test_a_half_written_frame_does_not_hide_later_records(tmp_path, monkeypatch):
    """Disk full in the middle of a frame: the next record goes to a new segment, the torn bytes are dropped."""
    import keyplane.usage.journal as journal

    w = JournalWriter(tmp_path, fsync="never")
    w.open()
    w.append(rec(1))
    real_write = os.write
    calls = {"n": 0}

    def flaky(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:5]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal.os, "write", flaky)
    with pytest.raises(OSError):
        w.append(rec(2))
    monkeypatch.setattr(journal.os, "write", real_write)
    w.append(rec(3))
    tail = Tail(tmp_path, w.writer, final=False, live=w)
    assert [r.id for r in tail.read(10)] == ["req_1", "req_3"]
    assert tail.dropped_bytes == 5
    w.close()
    w.release()


def test_two_writers_of_one_process_in_one_millisecond_both_open(tmp_path):
    """Writer ids are unique even within a millisecond (they name the lock file: the second used to fail)."""
    writers = [JournalWriter(tmp_path, fsync="never") for _ in range(20)]
    for w in writers:
        w.open()
    assert len({w.writer for w in writers}) == 20
    for w in writers:
        w.close()
        w.release()


def test_short_writes_are_completed(tmp_path, monkeypatch):
    """os.write taking a few bytes at a time: append writes the rest until the frame is whole."""
    import keyplane.usage.journal as journal

    w = JournalWriter(tmp_path, fsync="never")
    w.open()
    real_write = os.write
    monkeypatch.setattr(journal.os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    w.append(rec(1))
    w.append(rec(2))
    monkeypatch.setattr(journal.os, "write", real_write)
    w.append(rec(3))
    tail = Tail(tmp_path, w.writer, final=False, live=w)
    assert [r.id for r in tail.read(10)] == ["req_1", "req_2", "req_3"]
    assert tail.dropped_bytes == 0 and w.size == (tmp_path / journal.segment_name(w.writer, 1)).stat().st_size
    w.close()
    w.release()
