"""Holds: the requests under a money control that are running now, kept where a killed process leaves them.

A request admitted against a spend limit or enforced credit goes to the provider, which bills it whatever happens
to keyplane afterwards. Its reservation lives in the limiter (in process memory on a single node), and its usage
record is journaled only when it finishes: killed (``kill -9``, the OOM killer, a crash) with such requests
running, a process would leave no trace of them, and the restarted one would sell their share of the limit again.

So admission writes each such request's *hold* (a :class:`~keyplane.usage.journal.Record` of the request billed at
its reservation: status 0, ``estimated``) into a slot of ``<writer>.holds`` before the upstream call, and the
recorder frees the slot once the request's own record is in the journal (or in SQL, when the journal could not
take it). The file is memory-mapped (``MAP_SHARED``): a hold is a copy into the page cache, no system call, and
it survives the death of the process like a ``write()`` does (not a power loss: holds are never fsynced).
Its blocks are allocated up front (``posix_fallocate``), so a full disk never faults a write into it; a table
that cannot grow refuses the request instead (503 ``usage_journal_unavailable``).

A slot holds one journal frame (``[u32 length][u32 crc32][msgpack Record]``, usage/journal.py) in :data:`SLOT`
bytes; length 0 is a free slot. The payload is written before the header, so a slot torn by a kill in the middle
fails its CRC and is ignored (its request had not gone upstream yet). A dead writer's held slots are the requests it
had running: :func:`claim` appends them to its journal as records of their own (after its other records: one whose
request did finish has the same id and was applied first, so the SQL side, idempotent by id, keeps the real one),
and billing's seed counts them (:func:`dead_holds`) before anything is admitted.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
from pathlib import Path

import msgspec

from keyplane.usage.journal import Record, encode_frame, open_segment, parse_frames, segments_of, try_lock

log = logging.getLogger("keyplane.usage")

SLOT = 1024
_HEAD = 8  # a frame's length and CRC
INITIAL_SLOTS = 1024  # 1 MiB: a thousand requests running at once; doubled when full
INTERRUPTED = "interrupted: the process ended before the answer; billed at its reservation"


class HoldsUnavailable(OSError):
    """The table is full and cannot grow (a full disk): the request must not go upstream."""


def holds_path(folder: Path, writer: str) -> Path:
    return folder / f"{writer}.holds"


class Holds:
    """This process's table. ``hold`` on the serving loop; ``release`` from it or the applier's thread."""

    def __init__(self, folder: Path, writer: str, initial_slots: int = INITIAL_SLOTS) -> None:
        self.path = holds_path(folder, writer)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._slots = 0
        self._map: mmap.mmap | None = None
        self._free: list[int] = []
        self._initial = initial_slots
        self._closed = False
        self.held = 0
        try:
            self._grow(initial_slots)
        except OSError as e:  # a full disk at start: requests under a money control are refused until it has room
            log.error("usage journal: cannot allocate the holds table (%s); retried at each request that needs it", e)

    def _grow(self, slots: int) -> None:
        """Allocate the file's blocks for ``slots`` slots (zeros: free) and map them."""
        try:
            os.posix_fallocate(self._fd, 0, slots * SLOT)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            # A file system without fallocate: zeros written, which allocates the blocks all the same.
            size = os.fstat(self._fd).st_size
            if size < slots * SLOT:
                os.pwrite(self._fd, bytes(slots * SLOT - size), size)
        if self._map is None:
            self._map = mmap.mmap(self._fd, slots * SLOT, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        else:
            self._map.resize(slots * SLOT)
        self._free.extend(range(slots - 1, self._slots - 1, -1))  # lowest first (pop takes the end)
        self._slots = slots

    def hold(self, rec: Record) -> int:
        """Write ``rec`` into a free slot; its number. Raises :class:`HoldsUnavailable` when none is left and the
        table cannot grow."""
        frame = encode_frame(rec)
        if len(frame) > SLOT:  # a model name of hundreds of characters: the record's other fields matter
            frame = encode_frame(msgspec.structs.replace(rec, model=(rec.model or "")[:64], error=None))
        view = memoryview(frame)
        with self._lock:
            if self._closed:
                raise HoldsUnavailable(errno.ESHUTDOWN, "the holds table is closed (the process is stopping)")
            if not self._free:
                try:
                    self._grow(max(self._initial, self._slots * 2))
                except OSError as e:
                    raise HoldsUnavailable(e.errno, f"the holds table cannot grow: {e.strerror}") from None
            slot = self._free.pop()
            m = self._map
            assert m is not None
            off = slot * SLOT
            m[off + _HEAD : off + len(frame)] = view[_HEAD:]  # the payload first, the header that validates it last
            m[off : off + _HEAD] = view[:_HEAD]
            self.held += 1
        return slot

    def release(self, slot: int) -> None:
        with self._lock:
            m = self._map
            if m is None or slot < 0:
                return
            off = slot * SLOT
            m[off : off + _HEAD] = bytes(_HEAD)
            self._free.append(slot)
            self.held -= 1

    def close(self) -> None:
        """Unmap; the file is removed when nothing is held (else the next start bills what is: :func:`claim`)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            held = self.held
            if self._map is not None:
                self._map.close()
                self._map = None
            os.close(self._fd)
        if not held:
            self.path.unlink(missing_ok=True)


def read_holds(path: Path) -> list[Record]:
    """The held slots of a holds file (a torn or free slot is skipped)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out: list[Record] = []
    view = memoryview(data)
    for off in range(0, len(data) - SLOT + 1, SLOT):
        frames, _, _ = parse_frames(view[off : off + SLOT])  # a free slot's length 0, or a torn one's CRC: none
        out.extend(msgspec.structs.replace(rec, error=INTERRUPTED) for rec, _ in frames[:1])
    return out


def dead_holds(folder: Path, writer: str) -> list[Record]:
    """A dead writer's holds (none when its process is alive: its reservations are in its limiter)."""
    path = holds_path(folder, writer)
    if not path.exists():
        return []
    fd = try_lock(folder, writer, create=False)
    if fd is None and (folder / f"{writer}.lock").exists():
        return []  # alive
    if fd is not None:
        os.close(fd)
    return read_holds(path)


def dead_holds_in(folder: Path) -> dict[str, list[Record]]:
    """Every dead writer's holds under ``folder`` (read-only: billing's seed counts them)."""
    out: dict[str, list[Record]] = {}
    for p in folder.glob("*.holds") if folder.exists() else ():
        writer = p.name[: -len(".holds")]
        if not writer.startswith(".") and (recs := dead_holds(folder, writer)):
            out[writer] = recs
    return out


def claim(folder: Path, writer: str) -> list[Record]:
    """A dead writer's holds (its lock held by the caller) appended to its journal as records of their own, in a
    segment after its others, then its holds file removed; the records appended."""
    path = holds_path(folder, writer)
    recs = read_holds(path)
    if recs:
        segs = segments_of(folder, writer)
        fd = open_segment(folder, writer, (segs[-1] if segs else 0) + 1)
        try:
            view = memoryview(b"".join(encode_frame(r) for r in recs))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        log.warning(
            "usage journal: writer %s ended with %d requests under a money control running; billed at their "
            "reservations (%d micro-dollars)",
            writer,
            len(recs),
            sum(r.cost_micros for r in recs),
        )
    path.unlink(missing_ok=True)
    return recs
