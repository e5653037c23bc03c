"""The usage journal: an append-only local log of finished requests (DESIGN.md hot-path rule 6).

Each worker process writes its own files under the journal folder, named by a writer id that holds
its pid (``w<pid>-<start ms>``):

    <writer>.lock             held with flock(LOCK_EX) for the writer's whole life
    <writer>.<n>.seg          segments: frames [u32 length][u32 crc32][msgpack Record], appended
    <writer>.applied          "<segment> <offset>": how far the applier has written to SQL

A record is handed to the kernel with one write() before the response completes, so killing the
process (kill -9 included) loses nothing once write() returned. fsync is the only thing a power
loss cares about: ``always`` fsyncs each record, ``interval`` every few hundred ms in a thread,
``never`` leaves it to the OS (docs/metering.md "Guarantees").

A torn last frame (a crash in the middle of write(), or a power loss) fails its length or CRC check
and is dropped when the file is replayed. A writer whose lock is free is dead: any process may claim
its files (flock the lock) and replay them; the SQL side is idempotent by request id.

This module writes the journal; keyplane.usage.journal_tail reads it back.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import msgspec

log = logging.getLogger("keyplane.usage")

_HEADER = struct.Struct("<II")
_MAX_FRAME = 1 << 20  # a record is a few hundred bytes; anything larger is a corrupt length
READ_CHUNK = 1 << 22


class Record(msgspec.Struct, array_like=True, gc=False):
    """One finished request. Append new fields at the end, with defaults (old journals still decode)."""

    id: str
    t: float  # unix seconds when the response completed
    org_id: str | None
    project_id: str | None
    key_id: str | None
    user_id: str | None
    model: str | None
    upstream: str | None
    kind: str  # completions | responses | embeddings | moderations | images | audio_speeches | ...
    endpoint: str
    status: int
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    cost_input_micros: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    stream: bool = False
    disconnected: bool = False
    estimated: bool = False
    attempts: int = 0
    error: str | None = None
    upstream_request_id: str | None = None  # the upstream's x-request-id; ``id`` is keyplane's own
    units: int = 0  # images, characters or seconds of audio (the usage API's non-token buckets)
    input_audio_tokens: int = 0  # the audio part of input_tokens (audio models on chat completions, realtime)
    output_audio_tokens: int = 0  # the audio part of output_tokens
    service_tier: str = "default"  # the tier the answer says served it (served_tier); older journals: default
    key_lineage: str | None = None  # a rotated key's line (KeyEntry.lineage): its key-scope spend is counted there

    @property
    def model_request(self) -> bool:
        """Counted in the usage API's num_model_requests: a model answered (even partly)."""
        return self.status < 400 or self.input_tokens + self.output_tokens > 0


# The service tiers a record keeps as they are; any other plausible name (a tier OpenAI adds later) too.
SERVICE_TIERS = ("default", "flex", "priority", "scale")
_TIER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def served_tier(reported: object) -> str:
    """The tier a record keeps of the ``service_tier`` an answer reported: ``default`` for none, ``auto`` (not a
    tier that serves) or anything that is not a short lowercase name (the rollups key on it: no junk there)."""
    if not isinstance(reported, str) or not reported or reported == "auto":
        return "default"
    if reported in SERVICE_TIERS:
        return reported
    if len(reported) <= 32 and reported[0].isalpha() and _TIER_CHARS.issuperset(reported):
        return reported
    return "default"


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


def encode_frame(rec: Record) -> bytes:
    payload = _encoder.encode(rec)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def parse_frames(buf: bytes | memoryview, start: int = 0) -> tuple[list[tuple[Record, int]], int, bool]:
    """Decode whole frames from ``buf[start:]``: ([(record, end offset)], offset reached, bad frame seen).

    Stops at the first incomplete frame (offset reached points at it) or at a bad one (wrong length or
    CRC, or undecodable): ``bad`` is then True and nothing after it is trusted.
    """
    out: list[tuple[Record, int]] = []
    pos, n = start, len(buf)
    while pos + 8 <= n:
        length, crc = _HEADER.unpack_from(buf, pos)
        if length == 0 or length > _MAX_FRAME:
            return out, pos, True
        end = pos + 8 + length
        if end > n:
            break
        payload = buf[pos + 8 : end]
        if zlib.crc32(payload) != crc:
            return out, pos, True
        try:
            out.append((_decoder.decode(payload), end))
        except (msgspec.DecodeError, msgspec.ValidationError):
            return out, pos, True
        pos = end
    return out, pos, False


def new_writer_id() -> str:
    """Unique per writer: two writers of one process within one millisecond (tests, a restarted worker
    reusing a pid) must not share a lock file, or the second cannot open."""
    return f"w{os.getpid()}-{int(time.time() * 1000):x}-{os.urandom(4).hex()}"


def segment_name(writer: str, n: int) -> str:
    return f"{writer}.{n:08d}.seg"


def open_segment(folder: Path, writer: str, n: int) -> int:
    """A writer's segment ``n`` opened for appending (created private if new): its fd."""
    return os.open(folder / segment_name(writer, n), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def segments_of(folder: Path, writer: str) -> list[int]:
    out = []
    for p in folder.glob(f"{writer}.*.seg"):
        with contextlib.suppress(ValueError):
            out.append(int(p.name[len(writer) + 1 : -4]))
    return sorted(out)


def writers_in(folder: Path) -> set[str]:
    names: set[str] = set()
    for p in folder.iterdir() if folder.exists() else ():
        name = p.name
        if name.endswith((".seg", ".lock", ".applied", ".holds")) and not name.startswith("."):
            names.add(name.split(".", 1)[0])
    return names


def try_lock(folder: Path, writer: str, create: bool) -> int | None:
    """flock the writer's lock file; None if a live process holds it.

    A new lock file is created under a temporary name, locked, then linked into place, so that no
    other process ever sees an unlocked lock file of a live writer.
    """
    path = folder / f"{writer}.lock"
    if path.exists():
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd
    if not create:
        return None
    tmp = folder / f".{writer}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        os.link(tmp, path)
    except FileExistsError:
        os.close(fd)
        return try_lock(folder, writer, create=False)
    finally:
        tmp.unlink()
    return fd


@dataclass
class Position:
    segment: int
    offset: int


def read_applied(folder: Path, writer: str) -> Position:
    try:
        seg, off = (folder / f"{writer}.applied").read_text().split()
        return Position(int(seg), int(off))
    except (OSError, ValueError):
        return Position(0, 0)  # never applied (or a torn file after a power loss): replay all, idempotently


def write_applied(folder: Path, writer: str, pos: Position) -> None:
    tmp = folder / f".{writer}.applied.tmp"
    tmp.write_text(f"{pos.segment} {pos.offset}\n")
    os.replace(tmp, folder / f"{writer}.applied")


class JournalWriter:
    """Appends records for this process. Not thread-safe: one event loop writes."""

    def __init__(
        self, folder: Path, *, fsync: str = "interval", segment_bytes: int = 16 << 20, writer_id: str | None = None
    ) -> None:
        self.folder = folder
        self.fsync_mode = fsync
        self.segment_bytes = segment_bytes
        self.writer = writer_id or new_writer_id()
        self.segment = 0
        self.size = 0
        self.appended = 0  # records appended since start
        self.dirty = False  # written since the last fsync
        self._fd = -1
        self._lock_fd: int | None = None
        self._retired: list[int] = []  # fds of closed segments, fsynced and closed by sync()
        self._sync_lock = threading.Lock()  # sync() runs in a thread; close() must not race it
        self._torn = False  # a write() failed half-way: the next append starts a new segment
        self._rotate_failed = False  # the last try at a new segment failed (logged once)
        # In-memory handoff to the applier (set by it): (record, segment, end offset, monotonic time) per
        # append, so the journal is read back only to replay a crash. deque append/popleft are thread-safe.
        self.handoff: deque[tuple[Record, int, int, float]] | None = None
        self.handoff_max = 50_000  # beyond (the store is down...): dropped, the applier reads the files back

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_fd = try_lock(self.folder, self.writer, create=True)
        if self._lock_fd is None:
            raise RuntimeError(f"journal writer {self.writer} is locked by another process")
        self._use_segment(1, open_segment(self.folder, self.writer, 1))

    def _use_segment(self, n: int, fd: int) -> None:
        self._fd, self.segment, self.size = fd, n, os.fstat(fd).st_size

    def append(self, rec: Record) -> None:
        """One write() of one frame; raises OSError (disk full...) for the caller to count and log."""
        if self._torn:
            self._rotate()  # never append after a torn frame: readers would drop what follows it
            self._torn = False
        payload = _encoder.encode(rec)
        frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        written = 0
        try:
            written = os.write(self._fd, frame)  # whole, nearly always (a regular file)
            if written < len(frame):  # a short write: the rest, as it goes
                view = memoryview(frame)[written:]
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
                    written += n
        except OSError:
            if written:
                self.size += written
                self._torn = True
            raise
        self.size += len(frame)
        self.appended += 1
        handoff = self.handoff
        if handoff is not None:
            if len(handoff) < self.handoff_max:
                handoff.append((rec, self.segment, self.size, time.monotonic()))
            else:  # bounded memory: the journal holds it all, the applier goes back to reading it
                self.handoff = None
        if self.fsync_mode == "always":
            os.fsync(self._fd)
        else:
            self.dirty = True
        if self.size >= self.segment_bytes:
            try:
                self._rotate()
            except OSError as e:  # the record is written: the next append tries again
                if not self._rotate_failed:
                    log.error("usage journal: cannot start a new segment (%s); still appending to %d", e, self.segment)
                self._rotate_failed = True
            else:
                self._rotate_failed = False

    def _rotate(self) -> None:
        """Start the next segment. The next one is opened before the current one is retired: when it cannot be
        (a full disk, an unwritable folder), the writer keeps the segment it has (and tries again at the next
        append), never an fd it gave to sync() to close, whose number the process hands out again."""
        old, n = self._fd, self.segment + 1
        fd = open_segment(self.folder, self.writer, n)
        if self.fsync_mode == "never":
            os.close(old)
        else:
            self._retired.append(old)  # fsynced off the event loop by sync()
        self._use_segment(n, fd)

    def sync(self) -> None:
        """fsync what was written (called from a thread in interval mode)."""
        with self._sync_lock:
            retired, self._retired = self._retired, []
            for fd in retired:
                with contextlib.suppress(OSError):
                    os.fsync(fd)
                os.close(fd)
            if self.dirty and self._fd >= 0:
                self.dirty = False
                os.fsync(self._fd)

    def close(self) -> None:
        if self._fd < 0:
            return
        if self.fsync_mode != "never":
            self.sync()
        with self._sync_lock:
            for fd in self._retired:
                os.close(fd)
            self._retired = []
            os.close(self._fd)
            self._fd = -1

    def release(self) -> None:
        """Give up the lock (after close); the files stay until applied and cleaned."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
