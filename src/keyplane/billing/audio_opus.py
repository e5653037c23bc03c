"""Ogg Opus: an upper bound of what ffmpeg decodes from the bytes sent (billing/audio_length.py, issue 17).

What ffmpeg 5.1 does with an Ogg Opus file, and what keyplane counts from it:

- The ``ogg`` demuxer claims a file starting with ``OggS``, version 0, at its highest score; keyplane also
  requires that first page whole (its CRC matching) with the stream's first packet, ``OpusHead`` (a version
  ffmpeg takes, one or two channels in channel mapping family 0: one Opus stream, not multistream), and a
  first MiB without MPEG-TS packets (audio_formats.mpegts: the one probe that can score above; another scoring as
  high ties, and ffmpeg then opens nothing).
- The demuxer reads pages, each where it finds ``OggS`` and a matching CRC: after a bad CRC, or after bytes
  that are not a page, it searches again from just past the last page's (or the bad page's) capture pattern,
  so a page hidden inside another page's data may be read. Which pages it reads depends on the bytes before
  them: every offset of the file that starts a whole page with a matching CRC is a *candidate*, and the
  packets of every candidate count (pages are read at increasing offsets, each at most once). A page of
  another logical stream (a second stream, a chained one) makes the file unmeasured (None).
- A packet is counted where it starts, by its TOC byte (RFC 6716 section 3.1: frames times the frame size at
  48 kHz); a packet continued from an earlier page is that page's packet (the demuxer joins it or drops the
  continuation). Both of ffmpeg's Opus decoders write exactly the samples the TOC declares for a packet
  they take, and nothing for one they refuse (over 120 ms, or code 3 with 0 or over 48 frames: ``OpusHead``
  and ``OpusTags`` are such packets). The native one holds back the samples its SILK resampler delays and
  writes them at the next mode or bandwidth change or at the end: no more in all. Measured: thousands of
  packets of every mode, bandwidth, channel count and frame size spliced in every order never decoded to a
  sample more than their TOC sum at 48 kHz, nor, resampled to 8, 16 or 44.1 kHz, to more than a sample or
  two over it (counted once: MARGIN). An empty packet stops the demuxer (nothing is concealed).
- Nothing the file declares is read: granule positions (ffmpeg trims the last packet by them, never
  lengthens it), OpusHead's pre-skip (it only shortens), page sequence numbers. A page cut short by the end
  of the file is not read by ffmpeg and not counted. Timestamps that jump add nothing (ffmpeg fills no gap).
  The bound is the sum at 48 kHz, plus MARGIN.

:class:`Ogg` is fed the file in order (``feed``, then ``end``) and holds the bytes of at most one page (64 KiB)
past the last candidate it could check.
"""

from __future__ import annotations

import zlib
from fractions import Fraction
from typing import Final

from keyplane.billing.audio_formats import mpegts

OGG: Final = b"OggS"
# The names an upload of each container may have (billing/audio_length.py): what ffmpeg and browsers call them.
EXTENSIONS: Final = {"ogg": frozenset({"ogg", "oga", "opus"}), "webm": frozenset({"webm", "weba"})}
RATE: Final = 48000
MAX_PACKET: Final = 5760  # 120 ms at 48 kHz: both decoders refuse a longer packet
_PROBE: Final = (1 << 20) + 64  # what ffmpeg probes (billing/audio_length.py PROBE_WINDOW)
# Frame sizes at 48 kHz by TOC config: SILK 10/20/40/60 ms, hybrid 10/20 ms, CELT 2.5/5/10/20 ms.
_FRAME: Final = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4
_REVERSED: Final = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
# ffmpeg's resampler rounds its output up by a sample or two at some rates (44.1 kHz: 2 samples): once a file.
MARGIN: Final = 480


def packet_samples(toc: int, count: int | None) -> int:
    """The samples at 48 kHz a decoder writes for a packet of TOC byte ``toc`` (``count``: its second byte, the
    frame count of a code 3 packet; None when the packet has no second byte), 0 when the decoders refuse it."""
    code = toc & 3
    frames = 1 if code == 0 else 2 if code < 3 else -1 if count is None else count & 0x3F
    samples = frames * _FRAME[toc >> 3]
    return samples if 0 < samples <= MAX_PACKET else 0


def ogg_crc(page: bytes | bytearray | memoryview) -> int:
    """The Ogg CRC (polynomial 0x04C11DB7, unreflected, no initial or final XOR) of ``page`` as it is: zlib's
    reflected CRC-32 of the bit-reversed bytes, started and ended to cancel zlib's XORs, then bit-reversed."""
    c = zlib.crc32(bytes(page).translate(_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{c:032b}"[::-1], 2)


def opus_head(packet: bytes) -> bool:
    """An ``OpusHead`` ffmpeg takes, for one Opus stream of one or two channels (channel mapping family 0)."""
    return len(packet) >= 19 and packet[:8] == b"OpusHead" and packet[8] < 16 and packet[9] in (1, 2) and not packet[18]


class Ogg:
    """Every page candidate of an Ogg file fed in order; :meth:`result` is the bound (None: not measured)."""

    def __init__(self) -> None:
        self.samples = 0  # at 48 kHz, of every packet start of every candidate so far
        self.void = False  # not a file keyplane bounds
        self.size = 0  # bytes fed
        self._buf = bytearray()  # the file from offset _base on
        self._base = 0
        self._serial = -1  # the stream's, from the first page
        self._head = bytearray()  # the first _PROBE bytes, until checked
        self._checked = False
        self._crc_bytes = 0  # bytes CRC'd (candidates whose CRC did not match included)

    def feed(self, chunk: bytes) -> None:
        if self.void:
            return
        self.size += len(chunk)
        if not self._checked:
            self._head += chunk[: _PROBE - len(self._head)]
            if len(self._head) >= _PROBE:
                self._check_head()
        self._buf += chunk
        self._scan(final=False)

    def end(self) -> None:
        """The file ended."""
        if not self.void:
            if not self._checked:
                self._check_head()
            self._scan(final=True)
        self._buf = bytearray()

    def result(self) -> Fraction | None:
        if self.void or self._serial < 0 or not self.samples:
            return None
        return Fraction(self.samples + MARGIN, RATE)

    def _check_head(self) -> None:
        self._checked = True
        if mpegts(bytes(self._head)):
            self.void = True
        self._head = bytearray()

    def _scan(self, final: bool) -> None:
        buf, n = self._buf, len(self._buf)
        p = buf.find(OGG)
        while p >= 0 and not self.void:
            size = _page_size(buf, p)
            if size is None or p + size > n:  # a page not whole yet: wait for more (at the end: ffmpeg reads
                if not final:  # nothing of it)
                    break
            elif self._serial < 0 and self._base + p > 0:
                self.void = True  # the file does not start with a whole page (ffmpeg's probe reads it at 0)
            else:
                self._crc_bytes += size
                if self._crc_bytes > 2 * self.size + (1 << 20):  # capture patterns everywhere: not audio
                    self.void = True
                    break
                page = bytes(buf[p : p + size])
                if page[4] == 0 and int.from_bytes(page[22:26], "little") == ogg_crc(page[:22] + bytes(4) + page[26:]):
                    self._page(page)
                elif self._serial < 0:
                    self.void = True  # the first page must be whole (ffmpeg's probe reads it at offset 0)
            p = buf.find(OGG, p + 1)
        # keep the page not yet whole, or the last 3 bytes (a capture pattern across two chunks)
        keep = n if final else p if p >= 0 else max(0, n - 3)
        del buf[:keep]
        self._base += keep

    def _page(self, page: bytes) -> None:
        """A page whose CRC matches: its packet starts count."""
        serial = int.from_bytes(page[14:18], "little")
        lacing = page[27 : 27 + page[26]]
        data = page[27 + page[26] :]
        if self._serial < 0:  # the first page: OpusHead starts the stream
            first = next((i for i, s in enumerate(lacing) if s < 255), -1)
            if not page[5] & 2 or first < 0 or not opus_head(bytes(data[: sum(lacing[: first + 1])])):
                self.void = True
                return
            self._serial = serial
        elif serial != self._serial:
            self.void = True
            return
        at, start, cont = 0, 0, bool(page[5] & 1)  # a continued packet starts on an earlier page
        for s in lacing:
            at += s
            if s < 255:
                if not cont and at > start:
                    self.samples += packet_samples(data[start], data[start + 1] if at - start > 1 else None)
                start, cont = at, False
        if at > start and not cont:  # a packet that goes on in a later page starts here (255 bytes of it)
            self.samples += packet_samples(data[start], data[start + 1])


def _page_size(buf: bytearray, p: int) -> int | None:
    """The size of the page whose capture pattern is at ``p`` (None: its header is not whole in ``buf``)."""
    if p + 27 > len(buf) or p + 27 + buf[p + 26] > len(buf):
        return None
    nsegs = buf[p + 26]
    return 27 + nsegs + sum(buf[p + 27 : p + 27 + nsegs])
