"""WebM (Matroska) Opus: an upper bound of what ffmpeg decodes from the bytes sent (billing/audio_length.py).

What ffmpeg 5.1 does with a WebM file, and what keyplane counts from it:

- The ``matroska`` demuxer claims a file starting with an EBML header naming DocType ``webm`` or ``matroska``
  at its highest score (only MPEG-TS can score above it: audio_formats.py ``mpegts``). keyplane reads the
  file's elements as the demuxer does, one level at a time, and measures only what it reads the same way:
  the EBML header (versions ffmpeg opens), one Segment reaching to the end of the file (a known size, or an
  unknown one: browsers' MediaRecorder writes unknown-size Segments and Clusters, which end at the next
  top-level element or at the end of the file), exactly one Tracks before the first Cluster holding exactly
  one TrackEntry: an audio track, ``A_OPUS``, an ``OpusHead`` CodecPrivate of one or two channels in
  channel mapping family 0, no ContentEncodings (header stripping would change every packet's first byte),
  no TrackOperation or BlockAdditionMapping. Inside Clusters, only what the demuxer knows: Timecode,
  SimpleBlock, BlockGroup (Block, BlockDuration, DiscardPadding, ReferenceBlock, CodecState, no
  BlockAdditions), Position, PrevSize, Void, CRC-32. Any other element, a size past its parent's end, an
  unknown size elsewhere, a block of another track or with bad lacing: not measured (None).
- Every frame of every block (a block's laces: Xiph, EBML or fixed-size lacing, as ffmpeg splits them) is an
  Opus packet, counted by its TOC byte (audio_opus.py ``packet_samples``); an empty frame is not sent to
  the decoder. A frame starting like an Opus-in-TS header (``0x7FE``) makes ffmpeg's Opus parser, which
  the demuxer runs, re-frame every later packet: not measured. A block cut short by the end of the file is
  not read by ffmpeg and not counted.
- After an error the demuxer searches forward, byte by byte, for the ID of a top-level element (Cluster,
  Tracks, Cues...) and goes on from there: bytes inside a block could then be read as a Cluster. So the
  4-byte ID of a top-level element may occur in the file only where such an element starts (or as the
  SeekID of a SeekHead before the first Cluster); anywhere else, the file is not measured (random audio
  holds one in about 500 MB).
- Nothing declared is read: Duration, timecodes, BlockDuration, DiscardPadding, CodecDelay (ffmpeg only
  trims by them), Cues. The bound is the sum at 48 kHz.

:class:`Webm` is fed the file in order (``feed``, then ``end``) and holds at most one block (1 MiB). Elements read
one at a time (all but runs of plain SimpleBlocks) are capped at one per 32 bytes fed plus 65,536: BlockGroups of
one-byte frames cost 25 s of CPU for 32 MiB read that way; such a file is not measured.
"""

from __future__ import annotations

import re
from collections import deque
from fractions import Fraction
from typing import Final

from keyplane.billing.audio_formats import mpegts
from keyplane.billing.audio_opus import MARGIN, RATE, opus_head, packet_samples

EBML: Final = b"\x1a\x45\xdf\xa3"
_PROBE: Final = (1 << 20) + 64  # what ffmpeg probes (billing/audio_length.py PROBE_WINDOW)
# Elements read one at a time (a Cluster's, a BlockGroup's...; SimpleBlocks go faster: _simple_blocks): at most
# this many plus one per 32 bytes fed, about 4 s of CPU for 32 MiB (what muxers write is one BlockGroup, if any,
# per Cluster).
_ELEMENTS: Final = 65536
_MAX_VALUE: Final = 1 << 20  # the largest element keyplane holds (a block, CodecPrivate): larger is refused
_HEADER, _SEGMENT, _SEEKHEAD, _SEEK, _TRACKS, _ENTRY, _CLUSTER, _GROUP = (
    0x1A45DFA3, 0x18538067, 0x114D9B74, 0x4DBB, 0x1654AE6B, 0xAE, 0x1F43B675, 0xA0,
)  # fmt: skip
# The top-level elements a Segment holds, whose IDs ffmpeg's resync searches for.
_LEVEL1: Final = frozenset({0x1549A966, _TRACKS, 0x1C53BB6B, 0x1254C367, _SEEKHEAD, 0x1941A469, _CLUSTER, 0x1043A770})
_LEVEL1_IDS: Final = re.compile(b"|".join(re.escape(i.to_bytes(4, "big")) for i in sorted(_LEVEL1)))
_VOID: Final = frozenset({0xEC, 0xBF})  # Void, CRC-32: skipped anywhere
# What each master holds: "m" a master (may be read into), "s" skipped, "v" a value keyplane reads, "b" a block.
_SKIP_ANY = dict.fromkeys(_VOID, "s")
_CHILDREN: Final[dict[int, dict[int, str]]] = {
    0: {_HEADER: "m", _SEGMENT: "m"},
    _HEADER: {0x4286: "s", 0x42F7: "v", 0x42F2: "v", 0x42F3: "v", 0x4282: "v", 0x4287: "s", 0x4285: "v", **_SKIP_ANY},
    _SEGMENT: {**dict.fromkeys(_LEVEL1, "s"), _SEEKHEAD: "m", _TRACKS: "m", _CLUSTER: "m", **_SKIP_ANY},
    _SEEKHEAD: {_SEEK: "m", **_SKIP_ANY},
    _SEEK: {0x53AB: "v", 0x53AC: "s", **_SKIP_ANY},
    _TRACKS: {_ENTRY: "m", **_SKIP_ANY},
    _CLUSTER: {0xE7: "s", 0xA7: "s", 0xAB: "s", 0xA3: "b", _GROUP: "m", **_SKIP_ANY},
    _GROUP: {0xA1: "b", 0x9B: "s", 0x75A2: "s", 0xFB: "s", 0xA4: "s", **_SKIP_ANY},
}
# A TrackEntry's children are skipped, but for these: read (number, type, codec, OpusHead) or refused.
_ENTRY_VALUES: Final = {0xD7: "v", 0x83: "v", 0x86: "v", 0x63A2: "v", 0x6D80: "", 0xE2: "", 0x41E4: ""}
# A packet's samples by its TOC byte; -1 for code 3 (its second byte counts the frames).
_BY_TOC: Final = tuple(-1 if toc & 3 == 3 else packet_samples(toc, None) for toc in range(256))
# ffmpeg reads these as numbers, at most 8 bytes (longer: an error)
_NUMBERS: Final = frozenset({0x42F7, 0x42F2, 0x42F3, 0x4285, 0xE7, 0xA7, 0xAB, 0x9B, 0x75A2, 0xFB, 0xD7, 0x83})


class Webm:
    """The blocks of a WebM file fed in order; :meth:`result` is the bound (None: not measured)."""

    def __init__(self) -> None:
        self.samples = 0  # at 48 kHz, of every frame of every block read
        self.void = False  # not a file keyplane bounds
        self.size = 0  # bytes fed
        self._buf = bytearray()  # the bytes not read yet, from _buf[_at] (at offset _pos of the file) on
        self._at = 0
        self._pos = 0
        self._skip = 0  # bytes of the current element still to skip
        self._open: list[tuple[int, int]] = [(0, -1)]  # the masters read into: (ID, end offset or -1: unknown)
        self._seen: set[int] = set()  # the EBML header, Segment, Tracks, Cluster: met
        self._entries = 0  # TrackEntries
        self._track: dict[int, bytes] = {}  # the TrackEntry's number, type, codec ID and CodecPrivate
        self._doctype = False
        self._marks: deque[int] = deque()  # where a top-level element's ID occurs, not yet accounted for
        self._carry = 0  # bytes at the end of _buf already searched for top-level IDs (3 at most)
        self._head = bytearray()  # the first _PROBE bytes, until checked
        self._checked = False
        self._elements = 0  # element headers read one at a time (not by _simple_blocks)

    def feed(self, chunk: bytes) -> None:
        if self.void:
            return
        self.size += len(chunk)
        if not self._checked:
            self._head += chunk[: _PROBE - len(self._head)]
            if len(self._head) >= _PROBE:
                self._check_head()
        del self._buf[: self._at]
        self._at = 0
        start = len(self._buf) - self._carry
        self._buf += chunk
        for m in _LEVEL1_IDS.finditer(self._buf, max(0, start)):
            self._marks.append(self._pos + m.start())
        self._carry = min(3, len(self._buf))
        while not self.void and self._step():
            pass
        if len(self._marks) > 64:  # top-level IDs ahead, in an element skipped or not whole: not what encoders write
            self.void = True

    def end(self) -> None:
        """The file ended: what is not whole is not read (ffmpeg searches its bytes for top-level IDs)."""
        if not self.void:
            if not self._checked:
                self._check_head()
            self._account(self._pos + len(self._buf) - self._at + 4)
        self._buf = bytearray()

    def result(self) -> Fraction | None:
        if self.void or not self.samples:
            return None
        return Fraction(self.samples + MARGIN, RATE)

    def _check_head(self) -> None:
        self._checked = True
        if mpegts(bytes(self._head)):
            self.void = True
        self._head = bytearray()

    def _account(self, at: int) -> None:
        """A top-level element (or a SeekID) starts at ``at``: no top-level ID may occur before it unaccounted."""
        marks = self._marks
        while marks and marks[0] <= at:
            self.void |= marks.popleft() != at

    def _step(self) -> bool:
        """Read the next element header (or skip, or read a value); False when more bytes are needed."""
        buf, at = self._buf, self._at
        if self._skip:
            n = min(self._skip, len(buf) - at)
            self._consume(n)
            self._skip -= n
            return n > 0
        while self._open[-1][1] == self._pos:  # the masters that end here
            self._open.pop()
        parent, parent_end = self._open[-1]
        if parent == _CLUSTER and at < len(buf) and buf[at] == 0xA3 and self._simple_blocks(parent_end):
            return True
        head = _element(buf, at)
        if head is None:
            return False
        if head[0] < 0:  # not an EBML number ffmpeg reads
            self.void = True
            return False
        eid, hlen, size = head
        if parent == _CLUSTER and parent_end < 0 and eid in _LEVEL1:  # an unknown-size Cluster ends here
            self._open.pop()
            parent, parent_end = self._open[-1]
        kind = (_ENTRY_VALUES.get(eid, "s") if eid not in _VOID else "s") if parent == _ENTRY else None
        kind = _CHILDREN[parent].get(eid, "") if kind is None else kind
        end = -1 if size < 0 else self._pos + hlen + size
        if (
            not kind
            or (size < 0 and (parent_end >= 0 or eid not in (_SEGMENT, _CLUSTER)))
            or (parent_end >= 0 and end > parent_end)
            or (eid in _NUMBERS and size > 8)
            or (parent == 0 and (eid == _HEADER) != (self._pos == 0))
            or (eid == _HEADER and size > 1024)  # ffmpeg's probe must hold it whole
        ):
            self.void = True
            return False
        if parent == _SEGMENT:
            self._account(self._pos)
            if not self._level1(eid):
                return False
        elif parent == 0 and eid == _SEGMENT and (_SEGMENT in self._seen or not self._doctype):
            self.void = True
            return False
        if kind in ("v", "b"):
            if size > _MAX_VALUE:
                self.void = True
                return False
            if len(buf) - at < hlen + size or not self._counted():
                return False
            value = bytes(buf[at + hlen : at + hlen + size])
            self._consume(hlen + size)
            self._value(parent, eid, value) if kind == "v" else self._block(value)
            return True
        if not self._counted():
            return False
        self._consume(hlen)
        if kind == "m":
            self._open.append((eid, end))
            if parent == 0:
                self._seen.add(eid)
            elif eid == _ENTRY:
                self._entries += 1
        else:
            self._skip = size
        return True

    def _counted(self) -> bool:
        """One more element read one at a time; False (the file is not measured) past the cap (_ELEMENTS)."""
        self._elements += 1
        if self._elements > (self.size >> 5) + _ELEMENTS:  # (BlockGroups of a 1-byte frame every 9 bytes: 25 s
            self.void = True  # of CPU for 32 MiB, read an element at a time)
        return not self.void

    def _level1(self, eid: int) -> bool:
        """A top-level element: Tracks once, before the first Cluster; the first Cluster needs the track."""
        if eid == _TRACKS and (_TRACKS in self._seen or _CLUSTER in self._seen):
            self.void = True
        elif eid == _CLUSTER and _CLUSTER not in self._seen:
            t = self._track
            self.void = not (
                self._entries == 1
                and int.from_bytes(t.get(0xD7, b""), "big") > 0
                and t.get(0x83) == b"\x02"  # audio
                and t.get(0x86, b"").rstrip(b"\0") == b"A_OPUS"
                and opus_head(t.get(0x63A2, b""))
            )
        if eid in (_TRACKS, _CLUSTER):
            self._seen.add(eid)
        return not self.void

    def _value(self, parent: int, eid: int, value: bytes) -> None:
        if parent == _SEEK:
            if len(value) == 4 and _CLUSTER not in self._seen:
                self._account(self._pos - 4)
            return
        if parent == _ENTRY:
            self.void |= eid in self._track  # a field twice
            self._track[eid] = value
            return
        number = int.from_bytes(value, "big")
        if eid == 0x4282:
            self._doctype = value.rstrip(b"\0") in (b"webm", b"matroska")
        elif (eid == 0x42F7 and number > 1) or (eid == 0x42F3 and number > 8) or (eid == 0x42F2 and number > 4):
            self.void = True  # an EBML ffmpeg does not open
        elif eid == 0x4285 and number > 3:
            self.void = True

    def _block(self, block: bytes) -> None:
        """A SimpleBlock's or Block's frames, as ffmpeg's matroska_parse_block and _parse_laces split them."""
        head = _number(block, 0, 8)
        if head is None or head[0] < 0 or head[0] != int.from_bytes(self._track.get(0xD7, b""), "big"):
            self.void = True  # a block of no track: an error ffmpeg resyncs after
            return
        at = head[1]
        if len(block) - at < 3:
            self.void = True
            return
        lacing, at = (block[at + 2] >> 1) & 3, at + 3
        frames = _laces(block, at, lacing)
        if frames is None:
            self.void = True
            return
        for start, size in frames:
            if size > 2 and block[start] == 0x7F and block[start + 1] >= 0xE0:  # an Opus-in-TS header
                self.void = True
                return
            if size:
                self.samples += packet_samples(block[start], block[start + 1] if size > 1 else None)

    def _simple_blocks(self, cluster_end: int) -> bool:
        """The common case read in one loop: SimpleBlocks of one unlaced frame, of the track (a 1-byte number),
        sizes of 1 or 2 bytes, inside the Cluster; anything else is left to :meth:`_step`. False: none read."""
        buf, at = self._buf, self._at
        number = int.from_bytes(self._track.get(0xD7, b""), "big")
        if not 0 < number < 127:
            return False
        first, n, track_byte, samples, by_toc = at, len(buf), 0x80 | number, 0, _BY_TOC
        limit = n if cluster_end < 0 else min(n, at + cluster_end - self._pos)  # where blocks must end by
        while at + 6 < n and at < limit and buf[at] == 0xA3:
            s0 = buf[at + 1]
            if 0x80 <= s0 < 0xFF:
                size, q = s0 & 0x7F, at + 2
            elif 0x40 <= s0 < 0x7F or (s0 == 0x7F and buf[at + 2] < 0xFF):
                size, q = (s0 & 0x3F) << 8 | buf[at + 2], at + 3
            else:
                break
            if size < 5 or q + size > limit or buf[q] != track_byte or buf[q + 3] & 6:
                break
            toc = buf[q + 4]
            d = by_toc[toc]
            if d < 0:  # code 3: the frame count byte
                if size > 6 and toc == 0x7F and buf[q + 5] >= 0xE0:
                    break
                d = packet_samples(toc, buf[q + 5] if size > 5 else None)
            samples += d
            at = q + size
        if at == first:
            return False
        self.samples += samples
        self._consume(at - first)
        return True

    def _consume(self, n: int) -> None:
        self._at += n
        self._pos += n
        self._carry = min(self._carry, len(self._buf) - self._at)


def _number(b: bytes | bytearray, at: int, most: int) -> tuple[int, int] | None:
    """The EBML number at ``at`` (its value with the length marker cleared, and where it ends); (-1, 0) when
    its first byte is 0 or says it is longer than ``most``; None when ``b`` ends first."""
    if at >= len(b):
        return None
    first = b[at]
    n = 9 - first.bit_length() if first else 9
    if n > most:
        return -1, 0
    if at + n > len(b):
        return None
    return int.from_bytes(b[at : at + n], "big") & ((1 << (7 * n)) - 1), at + n


def _element(buf: bytearray, at: int) -> tuple[int, int, int] | None:
    """(ID, header length, size or -1: unknown) of the element at ``at``; (-1, 0, 0) when ffmpeg cannot read
    it; None when ``buf`` ends first."""
    if at >= len(buf):
        return None
    n = 9 - buf[at].bit_length() if buf[at] else 9
    if n > 4:
        return -1, 0, 0
    size = _number(buf, at + n, 8)
    if size is None:
        return None
    if size[0] < 0:
        return -1, 0, 0
    width = size[1] - at - n
    unknown = size[0] == (1 << (7 * width)) - 1
    return int.from_bytes(buf[at : at + n], "big"), size[1] - at, -1 if unknown else size[0]


def _laces(b: bytes, at: int, lacing: int) -> list[tuple[int, int]] | None:
    """(offset, size) of each frame of a block whose frames start at ``at``; None where ffmpeg refuses it."""
    if not lacing:
        return [(at, len(b) - at)]
    if at >= len(b):
        return None
    count, at = b[at] + 1, at + 1
    sizes: list[int] = []
    if lacing == 1:  # Xiph: each size a run of 255s and a last byte
        total = 0
        for _ in range(count - 1):
            size = 0
            while True:
                if len(b) - at <= total:
                    return None
                size += b[at]
                total += b[at]
                at += 1
                if b[at - 1] != 255:
                    break
            sizes.append(size)
    elif lacing == 2:  # fixed-size
        if (len(b) - at) % count:
            return None
        sizes = [(len(b) - at) // count] * (count - 1)
    else:  # EBML: the first size, then signed differences (one frame: what follows the first size, less it)
        first = _number(b, at, 8)
        if first is None or first[0] < 0 or first[0] > 0x7FFFFFFF:
            return None
        sizes, at = [first[0]], first[1]
        for _ in range(count - 2):
            d = _number(b, at, 8)
            if d is None or d[0] < 0:
                return None
            size = sizes[-1] + d[0] - ((1 << (7 * (d[1] - at) - 1)) - 1)
            if not 0 <= size <= 0x7FFFFFFF:
                return None
            sizes.append(size)
            at = d[1]
        if count == 1:
            if sizes[0] > len(b) - at:
                return None
            return [(at, len(b) - at - sizes[0])]
    if sum(sizes) > len(b) - at:
        return None
    sizes.append(len(b) - at - sum(sizes))
    out = []
    for size in sizes:
        out.append((at, size))
        at += size
    return out
