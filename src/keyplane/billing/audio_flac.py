"""FLAC (native, ``fLaC``): an upper bound of what ffmpeg decodes from the bytes sent (billing/audio_length.py).

What ffmpeg 5.1 does with a FLAC file, and what keyplane counts from it:

- The ``flac`` demuxer claims the file with the highest score when it starts with ``fLaC`` and a STREAMINFO
  block (34 bytes, a minimum block size of at least 16, a maximum one at least that, a sample rate from 1 to
  655,350 Hz: flac_probe); any other file starting with ``fLaC`` is not measured.
- Its parser cuts the rest into frames, each starting at a frame header; the decoder decodes each packet as
  one frame and writes the block size its header declares (``frame->nb_samples = blocksize``), or nothing
  when the header does not parse (ff_flac_decode_frame_header: the 15-bit sync code, no reserved block size,
  sample rate or sample size code, a clear reserved bit, a well-formed UTF-8 frame number and a matching
  CRC-8). Which headers the parser takes is its business (it scores chains of them): every byte of the file
  that starts such a header is a *candidate*, and the sum of every candidate's block size bounds the frames
  any parse can decode (distinct frames start at distinct bytes). STREAMINFO's sample count and frame sizes
  (a header that lies) are never read; a frame cut short by the end of the file counts whole.
- Every candidate must follow the one before it as the parser links two frames without reading a CRC-16:
  the same sample rate field (0 included), sample size code, channel count and blocking strategy, and the
  frame number one more (or the sample number one block more). Where a frame links to no later one (a
  number that jumps, a field that changes, with a CRC-16 footer that fails), ffmpeg 5.1's parser does not
  drain its buffer at the end of the file and hands the frames from its start to the decoder again, once a
  header left: the same bytes decode twice (a 65,535-sample frame before one unlinked frame: 8.2 s decoded of
  the 4.1 s its candidates sum to). Such a file is not measured (None).
- A frame header may name its own sample rate and channels, and the decoder follows it; the ffmpeg command
  line then rebuilds its filters and flushes a resampler's tail at the old rate (more audio than the frames
  hold, without bound at a rate of a few Hz). So a file any of whose candidates names a sample rate or a
  channel count other than STREAMINFO's is not measured (None); a rate of 0 (the code for "STREAMINFO's", or
  a coded 0) keeps the current one. What is counted is then every candidate's block size at STREAMINFO's rate.

:class:`Flac` is fed the file in order (``feed``), holding a header's worth of bytes between chunks; the
file's first bytes give STREAMINFO (:func:`streaminfo`).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Final

MAGIC: Final = b"fLaC"
_SYNC: Final = re.compile(b"\xff[\xf8\xf9]")
_MAX_HEADER: Final = 16  # sync, codes, a 6-byte frame number, 2 + 2 extra bytes, the CRC-8
_BLOCK_SIZES: Final = (0, 192, 576, 1152, 2304, 4608, -8, -16, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
_RATES: Final = (0, 88200, 176400, 192000, 8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000)


def _crc8_table() -> tuple[int, ...]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        out.append(c)
    return tuple(out)


_CRC8: Final = _crc8_table()


def streaminfo(head: bytes) -> tuple[int, int] | None:
    """(sample rate, channels) of a file ffmpeg's flac probe claims at its highest score; else None."""
    if len(head) < 42 or head[:4] != MAGIC or head[4] & 0x7F != 0 or int.from_bytes(head[5:8], "big") != 34:
        return None
    info = head[8:42]
    min_block, max_block = int.from_bytes(info[0:2], "big"), int.from_bytes(info[2:4], "big")
    rate = int.from_bytes(info[10:13], "big") >> 4
    channels = ((info[12] >> 1) & 7) + 1
    if min_block < 16 or max_block < min_block or not 1 <= rate <= 655350:
        return None
    return rate, channels


def header(b: bytes, p: int) -> tuple[int, int, int] | None:
    """(block size, sample rate or 0, channels) of the frame header at ``p`` as ffmpeg parses it, None when it
    does not parse (or needs bytes ``b`` does not have)."""
    h = _header(b, p)
    return None if h is None else h[:3]


def _header(b: bytes, p: int) -> tuple[int, int, int, int, int] | None:
    """:func:`header`, then the frame (or sample) number and what else ffmpeg's parser compares between two
    headers: the sample size code and the blocking strategy (``bps_code << 1 | variable``)."""
    n = len(b)
    if p + 5 > n:
        return None
    c2, c3 = b[p + 2], b[p + 3]
    bs_code, sr_code, ch, bps_code = c2 >> 4, c2 & 15, c3 >> 4, (c3 >> 1) & 7
    if bs_code == 0 or sr_code == 15 or ch > 10 or bps_code == 3 or c3 & 1:
        return None
    q = p + 4
    lead = b[q]  # the frame or sample number, UTF-8 coded (ffmpeg's GET_UTF8: at most 6 bytes)
    if lead & 0xC0 == 0x80 or lead >= 0xFE:
        return None
    more = 0
    while lead & (0x40 >> more) and lead & 0x80:
        more += 1
    q += 1
    if q + more > n:
        return None
    number = lead & (0x7F >> more) if more else lead
    for i in range(more):
        if b[q + i] & 0xC0 != 0x80:
            return None
        number = number << 6 | b[q + i] & 0x3F
    q += more
    size = _BLOCK_SIZES[bs_code]
    if size < 0:  # 8 or 16 bits of (block size - 1)
        k = -size // 8
        if q + k > n:
            return None
        size = int.from_bytes(b[q : q + k], "big") + 1
        q += k
    rate = _RATES[sr_code] if sr_code < 12 else 0
    if sr_code >= 12:
        k = 1 if sr_code == 12 else 2
        if q + k > n:
            return None
        v = int.from_bytes(b[q : q + k], "big")
        rate = v * (1000 if sr_code == 12 else 1 if sr_code == 13 else 10)
        q += k
    if q >= n:
        return None
    crc = 0
    for x in b[p : q + 1]:
        crc = _CRC8[crc ^ x]
    if crc:
        return None
    return size, rate, ch + 1 if ch < 8 else 2, number, bps_code << 1 | b[p + 1] & 1


class Flac:
    """Every frame header candidate of a native FLAC file fed in order; :meth:`result` is the bound (or None)."""

    def __init__(self) -> None:
        self.samples = 0  # the block sizes of the candidates so far
        self.rate = 0  # the one sample rate the candidates name (0: none names one)
        self.channels = 0  # the one channel count they have
        self.mixed = False  # they name two rates, or two channel counts
        self.syncs = 0  # sync codes met (each one a header parsed)
        # a candidate that does not follow the one before it as ffmpeg's parser links two frames (below)
        self.unlinked = False
        self._last: tuple[int, int, int, int, int] | None = None  # the last candidate's header
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        """The next bytes of the file (chunks in order, none skipped)."""
        buf = self._carry + chunk
        last = max(0, len(buf) - _MAX_HEADER)  # a header starting before this is whole in buf
        self._scan(buf, last)
        self._carry = buf[last:]

    def end(self) -> None:
        """The file ended: the headers in its last bytes."""
        self._scan(self._carry, len(self._carry))
        self._carry = b""

    def _scan(self, buf: bytes, stop: int) -> None:
        for m in _SYNC.finditer(buf, 0, stop + 1):
            p = m.start()
            if p >= stop:
                break
            self.syncs += 1
            h = _header(buf, p)
            if h is None:
                continue
            size, rate, channels, number, kind = h
            last = self._last
            if last is not None and (
                (last[1], last[2], last[4]) != (rate, channels, kind)
                or (number != last[3] + 1 and number - last[3] != last[0])
            ):
                self.unlinked = True
            self._last = h
            if rate:
                self.mixed |= self.rate not in (0, rate)
                self.rate = rate
            self.mixed |= self.channels not in (0, channels)
            self.channels = channels
            self.samples += size

    def result(self, rate: int, channels: int) -> Fraction | None:
        """The bound at STREAMINFO's ``rate`` and ``channels``; None when a candidate names others."""
        if self.unlinked or self.mixed or not self.samples:
            return None
        if self.rate not in (0, rate) or self.channels not in (0, channels):
            return None
        return Fraction(self.samples, rate)
