"""Round 24 red-team review of the audio length keyplane measures at admission (billing/audio_length.py,
audio_formats.py, audio_flac.py, audio_webm.py): a holder of a valid key uploading audio crafted to play longer
than keyplane measures (under-reservation past a hard spend limit), or to cost the gateway seconds of CPU. Each
test failed on the code as this round found it and passes with its fix:

1. FLAC whose frames do not link as ffmpeg 5.1's parser links them (a frame number that jumps, a CRC-16 that fails
   after it): at the end of the file the parser does not drain its buffer and hands the frames from its start to
   the decoder again, so a frame decodes twice. keyplane summed every candidate's block size once: a 65,535-sample
   frame before an unlinked one measured 4.11 s, ffmpeg 5.1.9 decodes 8.20 s (`ffmpeg -i a.flac -f s16le -`). Such
   a file is now not measured (refused under money controls, as any file keyplane cannot bound).
2. MPEG audio whose bytes are 0xFF: the scan stepped through each 0xFF byte in Python, 11.5 s of CPU for 32 MiB
   (the upload limit); headers are now found by the regex engine, only those ffmpeg's parser takes reaching Python.
3. WebM of BlockGroups of one-byte frames: each element read one at a time, 25 s of CPU for 32 MiB; the elements
   read that way are now capped (one per 32 bytes plus 65,536), past which the file is not measured.
"""

from __future__ import annotations

import struct
from fractions import Fraction

from keyplane.billing.audio_formats import MPA, MPA_HEADER
from keyplane.billing.audio_length import Meter, duration
from keyplane.billing.audio_webm import _ELEMENTS, Webm
from keyplane.billing.prices import PriceTable
from keyplane.billing.quote_media import quote_transcription
from keyplane.proxy import multipart
from tests.billing.test_audio_flac import FRAMES, HONEST, frame, streaminfo
from tests.billing.test_audio_length import frame as mpa_frame
from tests.billing.test_audio_opus import _vint, ebml_header, el, track, uint


def _bad_crc(f: bytes) -> bytes:
    """A frame whose CRC-16 footer fails (ffmpeg's decoder does not check it by default)."""
    return f[:-2] + bytes([f[-2] ^ 0x55, f[-1]])


def _fed(data: bytes, name: str, step: int) -> Fraction | None:
    m = Meter(name)
    for i in range(0, len(data), step):
        m.feed(data[i : i + step])
    return m.result()


# --- 1. FLAC frames ffmpeg's parser hands to the decoder twice ------------------------------------------------------


# Twelve frames of 16 samples, one of 65,535 whose CRC-16 fails, then one whose number jumps (at 16 kHz): the
# candidates sum to 65,743 samples (4.109 s); ffmpeg 5.1.9 decodes the big frame twice, 131,278 samples (8.205 s).
TWICE = (
    streaminfo() + b"".join(frame(i, 16) for i in range(12)) + _bad_crc(frame(12, 65535)) + _bad_crc(frame(1000, 16))
)


def test_a_flac_frame_the_parser_hands_over_twice_is_not_measured_short():
    got = duration(TWICE, "a.flac")
    assert got is None or got >= Fraction(131278, 16000)  # (it was 65743/16000)
    for step in (1, 13, 4096):
        assert _fed(TWICE, "a.flac", step) == got


def test_flac_frames_that_do_not_link_are_not_measured():
    # (ffmpeg 5.1.9, decoded vs what the candidates sum to, each file at 16 kHz)
    cases = {
        # a frame whose body holds junk (CRC-16 fails) before one whose number jumps: 2.56 s vs 2.304 s
        "jump": streaminfo() + b"".join(frame(i, 4096) for i in range(7)) + _bad_crc(frame(7, 4096)) + frame(9, 4096),
        # a frame naming the rate in Hz after one naming none (the parser compares the fields), CRC-16 failing
        # between them: 2.816 s vs 2.56 s
        "rate": streaminfo()
        + b"".join(frame(i, 4096) for i in range(8))
        + _bad_crc(frame(8, 4096))
        + frame(9, 4096, rate=16000),
        # a frame of the other blocking strategy (variable: 0xFFF9)
        "strategy": streaminfo() + b"".join(FRAMES[:5]) + _variable(frame(5, 4096)) + b"".join(FRAMES[6:]),
    }
    for why, data in cases.items():
        assert duration(data, "a.flac") is None, why


def _variable(f: bytes) -> bytes:
    """``f`` (a frame header of 8 bytes, a CRC-8, its subframe and footer) marked as of variable block size."""
    from keyplane.billing.audio_flac import _CRC8

    h = bytearray(f[:8])
    h[1] = 0xF9
    c = 0
    for x in h:
        c = _CRC8[c ^ x]
    return bytes(h) + bytes([c]) + f[9:]


def test_flac_frames_that_link_are_still_measured():
    assert duration(HONEST, "a.flac") == Fraction(256, 100)
    assert duration(HONEST[:-3], "a.flac") == Fraction(256, 100)  # the last frame cut short: counted whole
    # frame numbers from any start, junk without a header between frames: 2.56 s (ffmpeg: 2.56 s)
    late = streaminfo() + b"".join(frame(500 + i, 4096) + b"\x00junk" for i in range(10))
    assert duration(late, "a.flac") == Fraction(256, 100)
    # bad CRC-16 footers where the numbers follow: the parser links them all the same (ffmpeg: 2.56 s)
    assert duration(streaminfo() + b"".join(_bad_crc(f) for f in FRAMES), "a.flac") == Fraction(256, 100)


def test_a_flac_upload_keyplane_no_longer_bounds_is_priced_unmeasured():
    prices = PriceTable.from_config({})
    h = [(b"content-type", b"multipart/form-data; boundary=kpb")]
    body = (
        b'--kpb\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b'--kpb\r\nContent-Disposition: form-data; name="file"; filename="a.flac"\r\n\r\n' + TWICE + b"\r\n--kpb--\r\n"
    )
    q = quote_transcription(prices, "whisper-1", multipart.text_fields(h, body), len(body))
    assert q.estimate  # not a bound: refused where a spend limit applies (it was a bound of 5 seconds)


# --- 2. MPEG audio of 0xFF bytes -------------------------------------------------------------------------------------


def test_the_mpeg_header_pattern_takes_what_the_frame_table_takes():
    for b1 in range(256):
        for b2 in range(256):
            found = MPA_HEADER.match(bytes([0xFF, b1, b2, 0])) is not None
            assert found == (MPA[b1 << 8 | b2] is not None), (b1, b2)


def test_mpeg_audio_of_ff_bytes_costs_little():
    data = mpa_frame(bytes([0xFF, 0xFB, 0x90, 0x64])) * 8 + b"\xff" * (8 << 20)
    # The work, not a timing (timed tests are noise): a run of 0xFF bytes holds no header MPA_HEADER takes, so it
    # costs the scan no Python step (it was one per byte: 2.9 s of CPU for these 8 MiB, 11.5 s for 32 MiB); the
    # headers the scan does take are capped (Meter._candidates).
    assert MPA_HEADER.search(b"\xff" * 4096) is None
    m = Meter("a.mp3")
    for i in range(0, len(data), 65536):
        m.feed(data[i : i + 65536])
    assert m._candidates == 8
    assert m.result() == duration(mpa_frame(bytes([0xFF, 0xFB, 0x90, 0x64])) * 8, "a.mp3")


# --- 3. WebM of BlockGroups of one-byte frames ------------------------------------------------------------------------


def test_webm_of_tiny_block_groups_is_given_up_early():
    group = el(0xA0, el(0xA1, _vint(1) + struct.pack(">h", 0) + b"\x00" + bytes([0xF8])))  # 20 ms in 9 bytes
    size = 8 << 20
    data = (
        ebml_header()
        + el(0x18538067, unknown=True)
        + el(0x1549A966, uint(0x2AD7B1, 1000000))
        + el(0x1654AE6B, track())
        + el(0x1F43B675, unknown=True)
        + uint(0xE7, 0)
        + group * (size // len(group))
    )
    # The work, not a timing: elements read one at a time stop at the cap (one per 32 bytes fed plus 65,536), where
    # the file is given up (it read all of them: 6 s of CPU for these 8 MiB, 25 s for 32 MiB).
    m = Meter("a.webm")
    m.feed(data[:65536])
    webm = m._opus  # (the meter lets it go once it gives up)
    assert isinstance(webm, Webm)
    for i in range(65536, len(data), 65536):
        m.feed(data[i : i + 65536])
    assert webm.void
    assert webm._elements <= (len(data) >> 5) + _ELEMENTS + 1
    assert m.result() is None
    # a few BlockGroups, as muxers write them (one a Cluster at most), are read as before
    few = (
        ebml_header()
        + el(0x18538067, unknown=True)
        + el(0x1654AE6B, track())
        + el(0x1F43B675, unknown=True)
        + uint(0xE7, 0)
        + group * 1000
    )
    assert duration(few, "a.webm") == Fraction(1000 * 960 + 480, 48000)


def test_a_large_block_fed_a_byte_at_a_time_is_not_counted_again_and_again():
    """The cap counts elements read, not the times a block not yet whole is looked at."""
    big = el(0xA0, el(0xA1, _vint(1) + struct.pack(">h", 0) + b"\x00" + bytes([0xF8]) + bytes(100_000)))
    data = ebml_header() + el(0x18538067, unknown=True) + el(0x1654AE6B, track())
    data += el(0x1F43B675, unknown=True) + uint(0xE7, 0) + big
    assert _fed(data, "a.webm", 1) == duration(data, "a.webm") == Fraction(960 + 480, 48000)
