"""The MPEG audio frame table and ffmpeg's format probes, as billing/audio_length.py needs them: which file
ffmpeg would read as MPEG audio (its ``mp3`` demuxer, not another that claims the same bytes), and how long each
frame header says its frame is.

What ffmpeg's probes look for is mimicked conservatively: where another demuxer could claim a file, the file is
left unmeasured (docs/limits-and-billing.md "Audio length").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

TICKS: Final = 14_112_000  # per second: the lcm of every MPEG audio sample rate (ffmpeg's mp3 time base)
_FIRST_FRAMES: Final = 4  # chained frames of one kind the MPEG audio data must start with (mp3_read_header)
_PROBE_FRAMES: Final = 7  # chained frames (of any kind) ffmpeg's MP3 probe needs to score above ADTS, AC-3...
SPDIF_SYNC: Final = b"\x72\xf8\x1f\x4e"  # IEC 61937 Pa Pb, as ffmpeg's spdif probe looks for it
# Sync words of the formats ffmpeg's probes find anywhere in a buffer, and how many make MPEG audio unsure:
# MPEG-PS/ES, H.264/HEVC and VC-1 start codes (their probes need several; one or two turn up by chance, in a
# Xing header's frame count for one), S/PDIF bursts, TrueHD/MLP and DTS (raw and 14-bit) frames.
_FOREIGN_SYNCS: Final = (
    (b"\x00\x00\x01", 3),
    (b"\x72\xf8\x1f\x4e", 1),
    (b"\xf8\x72\x6f\xba", 4),
    (b"\xf8\x72\x6f\xbb", 4),
    (b"\x7f\xfe\x80\x01", 4),
    (b"\xfe\x7f\x01\x80", 4),
    (b"\x1f\xff\xe8\x00", 4),
    (b"\xff\x1f\x00\xe8", 4),
)
BOX_NAMES: Final = frozenset(
    {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"udta", b"junk", b"pict", b"meta", b"uuid"}
)
_TS_STRIDES: Final = (188, 192, 204)
_TS_SYNC: Final = re.compile(b"\x47")
_ADTS_SYNC: Final = re.compile(b"\xff[\xf0\xf1\xf8\xf9]")  # AAC ADTS and LOAS (LATM) frame headers
_LOAS_SYNC: Final = re.compile(b"\x56[\xe0-\xff]")
_GSM_NIBBLE: Final = bytes(range(0xD0, 0xE0))


def _mpa_table() -> list[tuple[int, int, int] | None]:
    """(frame bytes, duration in TICKS, sample rate) by the header's second and third bytes (``b1 << 8 | b2``),
    None where ffmpeg's parser does not take the header (ff_mpa_check_header, free format)."""
    rates = (44100, 48000, 32000)
    kbps = {
        (0, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
        (0, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
        (0, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
        (1, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
        (1, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
        (1, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    }
    table: list[tuple[int, int, int] | None] = [None] * 65536
    for b1 in range(0xE0, 0x100):
        version, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
        if version == 1 or layer_bits == 0:
            continue
        lsf, mpeg25 = (0, 0) if version == 3 else (1, int(version == 0))
        layer = 4 - layer_bits
        for b2 in range(256):
            br_index, sr_index, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
            if br_index in (0, 15) or sr_index == 3:
                continue
            rate = rates[sr_index] >> (lsf + mpeg25)
            br = kbps[(lsf, layer)][br_index]
            if layer == 1:
                size, samples = (br * 12000 // rate + padding) * 4, 384
            elif layer == 2:
                size, samples = br * 144000 // rate + padding, 1152
            else:
                size, samples = br * 144000 // (rate << lsf) + padding, 576 if lsf else 1152
            table[b1 << 8 | b2] = (size, samples * (TICKS // rate), rate)
    return table


MPA: Final = _mpa_table()


def _mpa_header() -> re.Pattern[bytes]:
    """Where a header of MPA starts: 0xFF before a second and third byte it takes (whether the table takes a
    header is a test of each byte alone), found by the regex engine, not a Python loop per 0xFF byte (a file of
    0xFF bytes took 11 s of CPU for 32 MiB that way)."""
    second = {b1 for b1 in range(256) if any(MPA[b1 << 8 | b2] for b2 in range(256))}
    third = {b2 for b2 in range(256) if any(MPA[b1 << 8 | b2] for b1 in range(256))}
    cls = lambda values: b"[" + b"".join(re.escape(bytes([v])) for v in sorted(values)) + b"]"  # noqa: E731
    return re.compile(b"\\xff(?=" + cls(second) + cls(third) + b")")


MPA_HEADER: Final = _mpa_header()


def mpa_start(h: bytes | bytearray) -> bool:
    return len(h) >= 1 and h[0] == 0xFF and (len(h) < 2 or h[1] >= 0xE0)


def act(head: bytes) -> bool:
    """ffmpeg's ACT probe (a G.729 recording with a WAV header) scores above WAV: a file it could claim."""
    return head[:4] == b"RIFF" and u32(head, 16) == 16 and len(head) > 256 and head[256] == 0x84


def after_id3(head: bytes, most: int = 1 << 20) -> int | None:
    """Where the audio starts after the ID3v2 tags at the start (ffmpeg skips them all, its probe the first
    only: ``most``); None when they end past the first MiB (the frames ffmpeg probes could not be checked)."""
    at = 0
    while head[at : at + 3] == b"ID3" and most > 0:
        most -= 1
        h = head[at : at + 10]
        if len(h) < 10 or h[3] == 0xFF or h[4] == 0xFF or any(x & 0x80 for x in h[6:10]):
            return None  # not a tag ffmpeg skips: its bytes would be probed as audio
        size = (h[6] << 21) | (h[7] << 14) | (h[8] << 7) | h[9]
        at += 10 + size + (10 if h[5] & 0x10 else 0)
        if at >= len(head):
            return None
    return at


def first_frames(head: bytes, at: int) -> bool:
    """The audio starts with _FIRST_FRAMES chained frames of one version, layer and sample rate, and
    _PROBE_FRAMES of any, as ffmpeg's MP3 probe chains them (a frame holding over two copies of its own
    header breaks the chain): with fewer it scores below the ADTS, LOAS, AC-3 or GSM probes."""
    first, p = None, at
    for n in range(_PROBE_FRAMES):
        e = MPA[head[p + 1] << 8 | head[p + 2]] if p + 4 <= len(head) and head[p] == 0xFF else None
        if e is None:
            return False
        mask = int.from_bytes(head[p : p + 4], "big") & 0xFFFE0CCF
        end = min(p + e[0], len(head) - 3)
        emu = sum(int.from_bytes(head[q : q + 4], "big") & 0xFFFE0CCF == mask for q in range(p + 4, end))
        if emu > 2:
            return False
        p += e[0]
        if p + 4 > len(head) and n >= _FIRST_FRAMES - 1:  # the file ends: ffmpeg's probe chained it whole
            break
    for _ in range(_FIRST_FRAMES):
        if at + 4 > len(head) or head[at] != 0xFF or head[at + 1] < 0xE0:
            return False
        e = MPA[head[at + 1] << 8 | head[at + 2]]
        if e is None:
            return False
        same = (head[at + 1] & 0xFE, head[at + 2] & 0x0C)
        if first is None:
            first = same
        elif same != first:
            return False
        at += e[0]
    return True


def foreign(window: bytes) -> bool:
    """What another demuxer could claim in the bytes ffmpeg probes: the sync words of _FOREIGN_SYNCS,
    MPEG-TS packets (0x47 at one offset of a packet stride in over a fifth of the packets of some probe
    size), an ISO BMFF box name at offset 4."""
    if window[4:8] in BOX_NAMES or any(window.count(sync) >= n for sync, n in _FOREIGN_SYNCS):
        return True
    adts = lambda w, p: (int.from_bytes(w[p + 3 : p + 7], "big") >> 13) & 0x1FFF  # noqa: E731
    loas = lambda w, p: (int.from_bytes(w[p : p + 3], "big") & 0x1FFF) + 3  # noqa: E731
    if _chained(window, _ADTS_SYNC, adts) or _chained(window, _LOAS_SYNC, loas) or _gsm(window):
        return True
    return mpegts(window)


def _chained(window: bytes, sync: re.Pattern[bytes], size_at: Callable[[bytes, int], int], need: int = 3) -> bool:
    """``need`` frames chained by their sizes from a header ``sync`` finds: the ADTS and LOAS probes score
    such runs (three at the start, over a hundred anywhere) above an MP3 probe short of seven frames."""
    for m in sync.finditer(window):
        p, n = m.start(), 0
        while n < need and sync.match(window, p) and (size := size_at(window, p)) >= 7:
            p, n = p + size, n + 1
        if n >= need:
            return True
    return False


def _gsm(window: bytes) -> bool:
    """ffmpeg's GSM probe (a 0xD nibble starting most 33-byte blocks from the start of the probe) at each
    probe size, at its lower score (an eighth invalid) to be safe: each 33 bytes are then 20 ms of audio."""
    size = 2048
    while True:
        blocks = window[: max(0, min(size, len(window)) - 32) : 33]
        valid = len(blocks) - len(blocks.translate(None, _GSM_NIBBLE))
        if blocks and valid >> 3 > len(blocks) - valid:
            return True
        if size >= len(window):
            return False
        size *= 2


def u32(b: bytes | bytearray, at: int) -> int:
    return int.from_bytes(b[at : at + 4], "little")


def mpegts(window: bytes) -> bool:
    """MPEG-TS packets in the bytes ffmpeg probes: 0x47 at one offset of a packet stride (188, 192, 204) in over a
    fifth of the packets of some probe size (doubling from 2 KiB), or sync bytes far more often than by chance."""
    syncs = [m.start() for m in _TS_SYNC.finditer(window, 0, max(0, len(window) - 3))]
    if len(syncs) > len(window) // 16 + 64:  # 1 in 256 by chance
        return True
    for stride in _TS_STRIDES:
        at_offset = [0] * stride  # sync bytes at each offset of the stride, in the probe size so far
        size, i = 2048, 0
        while True:  # each probe size ffmpeg may try, doubling
            while i < len(syncs) and syncs[i] < size:
                at_offset[syncs[i] % stride] += 1
                i += 1
            packets = min(size, len(window)) // stride
            if packets >= 5 and max(at_offset) >= max(5, packets // 5):
                return True
            if size >= len(window):
                break
            size *= 2
    return False
