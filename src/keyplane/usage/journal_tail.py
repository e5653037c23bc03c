"""Reading the usage journal back (keyplane.usage.journal writes it): the applier's :class:`Tail` of one writer's
files from its last applied position, and :func:`unapplied_records` for billing's seeding.

A dead writer's torn last frame (a crash in the middle of write(), or a power loss) fails its length or CRC
check and is dropped here; the SQL side is idempotent by request id, so a record read twice is harmless.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from keyplane.usage.journal import (
    READ_CHUNK,
    Position,
    Record,
    parse_frames,
    read_applied,
    segment_name,
    segments_of,
    write_applied,
    writers_in,
)

log = logging.getLogger("keyplane.usage")


class Tail:
    """Reads one writer's records from the last applied position; ``commit`` moves that position.

    ``final`` is for dead writers: an incomplete or bad frame at the end of their last segment is a
    torn write and is dropped. For the live writer an incomplete frame cannot happen (one write()
    per frame, in the same thread), so the reader simply waits for more.
    """

    def __init__(self, folder: Path, writer: str, *, final: bool, live: Any = None) -> None:
        self.folder = folder
        self.writer = writer
        self.final = final
        self.live = live  # the JournalWriter when this is our own journal
        self.pos = read_applied(folder, writer)
        self._next = Position(self.pos.segment, self.pos.offset)
        self.dropped_bytes = 0

    def read(self, max_records: int) -> list[Record]:
        """Up to ``max_records`` records after the committed position (not committed yet)."""
        out: list[Record] = []
        cur = Position(self.pos.segment, self.pos.offset)
        segs = [s for s in segments_of(self.folder, self.writer) if s >= cur.segment]
        for i, seg in enumerate(segs):
            if seg != cur.segment:
                cur = Position(seg, 0)
            last = i == len(segs) - 1
            recs, cur.offset, complete = self._read_segment(
                seg, cur.offset, max_records - len(out), may_drop=self.final or not last
            )
            out.extend(recs)
            if len(out) >= max_records or not complete:
                break
        self._next = cur
        return out

    def _read_segment(self, seg: int, offset: int, room: int, may_drop: bool) -> tuple[list[Record], int, bool]:
        """(records, offset reached, reached the end of the file)."""
        out: list[Record] = []
        path = self.folder / segment_name(self.writer, seg)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, the loop returns from several places
        except FileNotFoundError:
            return out, offset, True
        with f:
            f.seek(offset)
            buf = b""
            while True:
                chunk = f.read(READ_CHUNK)
                if not chunk:
                    break
                buf = buf + chunk if buf else chunk
                frames, used, bad = parse_frames(buf)
                take = frames[: room - len(out)]
                out.extend(rec for rec, _ in take)
                if len(take) < len(frames):
                    return out, offset + take[-1][1] if take else offset, False
                offset += used
                buf = buf[used:]
                if bad:
                    # Corrupt bytes (a bad length or CRC): nothing after them can be trusted.
                    rest = len(buf) + len(f.read())
                    self._drop(path, rest, "a corrupt record")
                    return out, offset + rest, True
                if len(out) >= room:
                    return out, offset, not buf and not f.read(1)
        if buf:  # an incomplete frame at the end of the file
            if not may_drop:
                return out, offset, False  # the live writer is not done with it
            self._drop(path, len(buf), "a torn last record")
            return out, offset + len(buf), True
        return out, offset, True

    def _drop(self, path: Path, n: int, what: str) -> None:
        self.dropped_bytes += n
        log.warning("usage journal %s: dropped %d bytes of %s", path.name, n, what)

    def commit(self) -> None:
        """Persist the position reached by the last read; delete segments left behind."""
        if (self._next.segment, self._next.offset) == (self.pos.segment, self.pos.offset):
            return
        self.pos = Position(self._next.segment, self._next.offset)
        write_applied(self.folder, self.writer, self.pos)
        current = self.live.segment if self.live is not None else None
        for seg in segments_of(self.folder, self.writer):
            if seg < self.pos.segment and seg != current:
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / segment_name(self.writer, seg)).unlink()

    def at_end(self) -> bool:
        segs = segments_of(self.folder, self.writer)
        if not segs:
            return True
        last = segs[-1]
        if self.pos.segment < last:
            return False
        try:
            size = (self.folder / segment_name(self.writer, last)).stat().st_size
        except FileNotFoundError:
            return True
        return self.pos.offset >= size

    def remove_files(self) -> None:
        """Delete every file of a dead, fully applied writer (the lock last). Not its holds: claimed (billed) and
        removed by usage/holds.py, or still holding requests of this process that outlived its drain."""
        for p in self.folder.glob(f"{self.writer}.*"):
            if not p.name.endswith((".lock", ".holds")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.folder / f"{self.writer}.lock").unlink()


def unapplied_records(folder: Path) -> list[tuple[str, Record]]:
    """(writer, record) of every record the applier has not committed yet, in every writer's journal under
    ``folder``: read-only (no lock taken, no position moved). Billing seeds its budgets with them; a record
    that was applied just now may still be listed (the caller checks ids against the store)."""
    out: list[tuple[str, Record]] = []
    for writer in sorted(writers_in(folder)):
        out.extend((writer, rec) for rec in Tail(folder, writer, final=False).read(1 << 62))
    return out
