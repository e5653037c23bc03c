"""FLAC measured as an upper bound of what ffmpeg decodes (billing/audio_flac.py, issue 17).

The files are made here, frame by frame (CONSTANT subframes: a few bytes a frame, any block size). The
``decoded`` constants are what ffmpeg 5.1 (Debian 12) gave for the same bytes with ``ffmpeg -v error -i FILE
-ac 1 -ar 48000 -f s16le -`` (PCM bytes / 2 / 48000); ffmpeg is not needed to run these tests.
"""

from __future__ import annotations

import struct
from fractions import Fraction

from keyplane.billing.audio_flac import _CRC8, header
from keyplane.billing.audio_length import Meter, duration


def _crc8(b: bytes) -> int:
    c = 0
    for x in b:
        c = _CRC8[c ^ x]
    return c


def _crc16(b: bytes) -> int:
    c = 0
    for x in b:
        c ^= x << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x8005) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
    return c


def frame(num: int, block: int, channels: int = 1, rate: int | None = None, verbatim: bool = False) -> bytes:
    """A 16-bit frame of ``block`` samples of silence (block size coded in 16 bits; ``rate``: coded in Hz), each
    channel a CONSTANT subframe (3 bytes), or a VERBATIM one (the samples as they are: 2 bytes each)."""
    sr_code, extra = (0, b"") if rate is None else (13, struct.pack(">H", rate))
    h = bytes([0xFF, 0xF8, 7 << 4 | sr_code, (channels - 1) << 4 | 4 << 1]) + _utf8(num) + struct.pack(">H", block - 1)
    h += extra
    h += bytes([_crc8(h)])
    sub = b"\x02" + bytes(2 * block) if verbatim else b"\x00\x00\x00"
    f = h + sub * channels
    return f + struct.pack(">H", _crc16(f))


def _utf8(n: int) -> bytes:
    """A frame number as FLAC codes it (UTF-8 style: up to 31 bits here)."""
    if n < 0x80:
        return bytes([n])
    more = next(k for k in range(1, 6) if n < 1 << (5 * k + 6))
    tail = [0x80 | (n >> (6 * i)) & 0x3F for i in range(more - 1, -1, -1)]
    return bytes([(0xFF00 >> (more + 1)) & 0xFF | n >> (6 * more), *tail])


def streaminfo(rate: int = 16000, channels: int = 1, total: int = 0, min_block: int = 16) -> bytes:
    info = struct.pack(">HH", min_block, 65535) + bytes(6)
    info += (rate << 44 | (channels - 1) << 41 | 15 << 36 | total).to_bytes(8, "big") + bytes(16)
    return b"fLaC" + b"\x80" + (34).to_bytes(3, "big") + info


FRAMES = [frame(i, 4096) for i in range(10)]
HONEST = streaminfo() + b"".join(FRAMES)  # 10 x 4096 samples at 16 kHz: 2.56 s


def test_a_flac_file_is_its_frames_block_sizes_fed_whole_or_in_pieces():
    decoded = Fraction(256, 100)  # ffmpeg: 2.56 s
    assert duration(HONEST, "a.flac") == decoded
    for step in (1, 7, 300):
        m = Meter("speech.FLAC")
        for i in range(0, len(HONEST), step):
            m.feed(HONEST[i : i + step])
        assert m.result() == decoded, step


def test_what_the_file_says_of_itself_changes_nothing():
    # STREAMINFO says one sample: ffmpeg decodes every frame all the same (2.56 s)
    assert duration(streaminfo(total=1) + b"".join(FRAMES), "a.flac") == Fraction(256, 100)
    # junk between frames, sync codes in it: only parsing headers count (ffmpeg: 2.56 s)
    junk = streaminfo() + b"".join(f + b"\x00junk\xff\xf8junk" for f in FRAMES)
    assert duration(junk, "a.flac") == Fraction(256, 100)
    # a frame hidden inside each frame's last bytes: ffmpeg's parser takes some of them (2.816 s decoded), and
    # where two frames do not link (their numbers), it may hand the same frame to the decoder twice at the end
    # (tests/redteam/test_round24_audio.py): not measured
    nested = streaminfo() + b"".join(f[:-2] + frame(50 + i, 4096) + f[-2:] for i, f in enumerate(FRAMES))
    assert duration(nested, "a.flac") is None
    # a frame cut short by the end of the file counts whole (ffmpeg: 2.304 s)
    assert duration(HONEST[:-3], "a.flac") == Fraction(256, 100)


def test_a_frame_naming_another_rate_or_channel_count_is_not_measured():
    # one frame at 1 Hz: ffmpeg decodes it at that rate, 4096 seconds of it, then resamples (8162 s decoded)
    odd = [*FRAMES[:5], frame(5, 4096, rate=1), *FRAMES[6:]]
    assert duration(streaminfo() + b"".join(odd), "a.flac") is None
    # a frame that names STREAMINFO's rate where the one before names none: ffmpeg's parser links them only by
    # their CRC-16, which keyplane does not check (a frame that links to none may be decoded twice: not measured)
    same = [*FRAMES[:5], frame(5, 4096, rate=16000), *FRAMES[6:]]
    assert duration(streaminfo() + b"".join(same), "a.flac") is None
    stereo = [*FRAMES[:5], frame(5, 4096, channels=2), *FRAMES[6:]]
    assert duration(streaminfo() + b"".join(stereo), "a.flac") is None


def test_what_is_not_a_flac_file_keyplane_bounds():
    assert duration(HONEST, "a.wav") is None  # named otherwise: a provider may pick another demuxer
    assert duration(HONEST, "a") is None
    assert duration(streaminfo(min_block=8) + b"".join(FRAMES), "a.flac") is None  # probed below other demuxers
    assert duration(streaminfo(), "a.flac") is None  # no frame
    assert duration(b"fLaC" + bytes(100), "a.flac") is None
    flood = streaminfo() + b"\xff\xf8" * 200_000  # sync codes every two bytes: no one's audio
    assert duration(flood, "a.flac") is None


def test_a_frame_header_is_read_as_ffmpeg_reads_it():
    f = frame(3, 1152)
    assert header(f, 0) == (1152, 0, 1)
    assert header(f[:-8], 0) is None  # cut before its CRC-8
    bad_crc = bytearray(f)
    bad_crc[7] ^= 1
    assert header(bytes(bad_crc), 0) is None
    # a reserved sample size code (3), a reserved bit set, a UTF-8 continuation byte first: no header
    for at, value in ((3, 0x06), (3, 0x09), (4, 0x80)):
        g = bytearray(f[:8])
        g[at] = value
        g += bytes([_crc8(bytes(g))])
        assert header(bytes(g), 0) is None, (at, value)
    # a two-byte frame number is read (and its continuation byte checked)
    g = bytes([0xFF, 0xF8, 0x7 << 4 | 9, 0x08, 0xC2, 0x80, 0x0F, 0xFF])
    assert header(g + bytes([_crc8(g)]), 0) == (4096, 44100, 1)
    g = bytes([0xFF, 0xF8, 0x7 << 4 | 9, 0x08, 0xC2, 0x00, 0x0F, 0xFF])
    assert header(g + bytes([_crc8(g)]), 0) is None
