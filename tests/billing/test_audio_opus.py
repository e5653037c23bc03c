"""Opus in Ogg and in WebM measured as an upper bound of what ffmpeg decodes (billing/audio_opus.py,
billing/audio_webm.py, issue 17).

The files are made here, packet by packet: an Opus packet is a TOC byte (its configuration says the frame
size, its code how many frames) and bytes the decoder reads as they come. The ``ffmpeg`` figures are what
ffmpeg 5.1 (Debian 12) decoded from the same bytes with ``ffmpeg -v error -i FILE -ac 1 -ar 48000 -f s16le -``
(PCM bytes / 2 / 48000; ``-c:a libopus`` before ``-i`` gave the same); ffmpeg is not needed to run these tests.
Every bound is the packets' TOC sum plus 10 ms (audio_opus.MARGIN).
"""

from __future__ import annotations

import hashlib
import struct
from fractions import Fraction

import openai
import pytest
from openai import OpenAI

from keyplane.billing.audio_length import Meter, duration
from keyplane.billing.audio_opus import ogg_crc, packet_samples
from tests.billing.conftest import billing_of
from tests.billing.conftest import set_spend_limit as _limit

MS = Fraction(1, 1000)
MARGIN = 10 * MS

# --- Opus packets ------------------------------------------------------------------------------------


def packet(toc: int, size: int = 60, seed: int = 0) -> bytes:
    """A packet of TOC byte ``toc`` and ``size`` bytes in all (the rest: bytes the decoder reads as noise)."""
    body = b""
    while len(body) < size:
        body += hashlib.sha256(b"%d:%d:%d" % (toc, seed, len(body))).digest()
    return bytes([toc]) + body[: size - 1]


CELT20 = 31 << 3  # CELT fullband, 20 ms
SILK60 = 3 << 3  # SILK narrowband, 60 ms
HYBRID10 = 14 << 3  # hybrid fullband, 10 ms


def test_a_packet_lasts_what_its_toc_byte_says():
    assert packet_samples(CELT20, None) == 960  # one 20 ms frame
    assert packet_samples(SILK60 | 1, None) == 5760  # two 60 ms frames
    assert packet_samples(HYBRID10 | 2, 0) == 960
    assert packet_samples(16 << 3 | 3, 5) == 5 * 120  # code 3: five 2.5 ms frames
    assert packet_samples(CELT20 | 3, 6) == 5760
    # what both decoders refuse (nothing decoded): over 120 ms, 0 frames, a code 3 packet of one byte
    assert packet_samples(CELT20 | 3, 7) == 0
    assert packet_samples(CELT20 | 3, 0x80) == 0
    assert packet_samples(CELT20 | 3, None) == 0
    assert packet_samples(b"O"[0], b"p"[0]) == 0  # OpusHead, OpusTags


# --- Ogg ---------------------------------------------------------------------------------------------


def _crc(b: bytes) -> int:
    c = 0
    for x in b:
        c ^= x << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if c & 0x80000000 else (c << 1) & 0xFFFFFFFF
    return c


def page(
    packets: list[bytes], flags: int = 0, granule: int = 0, serial: int = 7, seq: int = 0, open_end: bool = False
) -> bytes:
    """One Ogg page of ``packets`` (``open_end``: the last one goes on in the next page)."""
    lacing = b""
    for i, p in enumerate(packets):
        lacing += b"\xff" * (len(p) // 255)
        if not (open_end and i == len(packets) - 1):
            lacing += bytes([len(p) % 255])
    head = b"OggS\0" + bytes([flags]) + struct.pack("<qII", granule, serial, seq) + bytes(4) + bytes([len(lacing)])
    p = head + lacing + b"".join(packets)
    return p[:22] + struct.pack("<I", _crc(p)) + p[26:]


def opus_head(channels: int = 1, pre_skip: int = 312, family: int = 0) -> bytes:
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, 48000, 0, family)


TAGS = b"OpusTags" + struct.pack("<I", 2) + b"kp" + struct.pack("<I", 0)


def ogg(packets: list[bytes], per_page: int = 50, serial: int = 7, head: bytes | None = None, granule=None) -> bytes:
    """An Ogg Opus file: OpusHead, OpusTags, then ``per_page`` packets a page (``granule(i)``: page i's)."""
    out = page([head or opus_head()], flags=2, serial=serial) + page([TAGS], serial=serial, seq=1)
    at = 0
    for i in range(0, len(packets), per_page):
        group = packets[i : i + per_page]
        at += sum(packet_samples(p[0], p[1]) for p in group)
        last = i + per_page >= len(packets)
        g = granule(i) if granule else at
        out += page(group, flags=4 if last else 0, granule=g, serial=serial, seq=2 + i // per_page)
    return out


# 150 CELT packets of 20 ms and 50 SILK packets of 60 ms: 6 s (ffmpeg: 5.9935 s, pre-skip trimmed)
PACKETS = [packet(CELT20, seed=i) for i in range(150)] + [packet(SILK60, 40, seed=i) for i in range(50)]
HONEST = ogg(PACKETS)
SIX = 6 + MARGIN


def test_the_crc_is_oggs():
    assert ogg_crc(b"OggS") == _crc(b"OggS") == 0x5FB0A94F
    assert ogg_crc(HONEST[:100]) == _crc(HONEST[:100])


def test_an_ogg_opus_file_is_its_packets_toc_sum_fed_whole_or_in_pieces():
    assert duration(HONEST, "a.ogg") == SIX
    for step in (1, 7, 4096):
        m = Meter("voice.OPUS")
        for i in range(0, len(HONEST), step):
            m.feed(HONEST[i : i + step])
            assert m.hopeful
        assert m.result() == SIX, step


def test_what_an_ogg_file_says_of_itself_changes_nothing():
    # granule positions that say almost nothing, or jump by hours (ffmpeg: 3.0535 s, 5.9935 s)
    assert duration(ogg(PACKETS, granule=lambda i: 1), "a.ogg") == SIX
    assert duration(ogg(PACKETS, granule=lambda i: i * 48000 * 3600), "a.ogg") == SIX
    # a pre-skip of 1.35 s (ffmpeg trims it: 4.6458 s)
    assert duration(ogg(PACKETS, head=opus_head(pre_skip=65000)), "a.ogg") == SIX


def test_pages_hidden_or_split_count_as_ffmpeg_may_read_them():
    # a page hidden inside a packet of the next page, junk after it: ffmpeg searches back and decodes the
    # hidden page too (6.4135 s); every page candidate counts
    hidden = page([packet(CELT20, seed=900 + i) for i in range(20)], serial=7, seq=50)
    carrier = page([packet(CELT20, 20, seed=1) + hidden], serial=7, seq=51) + b"junk"
    f = HONEST + carrier
    assert duration(f, "a.ogg") == SIX + 21 * 20 * MS
    # a packet split across two pages counts once, where it starts (ffmpeg: 6.0135 s)
    split = packet(CELT20, 600, seed=2)
    f = HONEST + page([split[:510]], serial=7, seq=60, open_end=True) + page([split[510:]], flags=1, serial=7, seq=61)
    assert duration(f, "a.ogg") == SIX + 20 * MS
    # a page cut short by the end of the file is not read (ffmpeg: 5.9935 s)
    assert duration(HONEST + hidden[:-5], "a.ogg") == SIX
    # a page whose CRC does not match is not read (ffmpeg: 5.9935 s)
    bad = bytearray(hidden)
    bad[30] ^= 1
    assert duration(HONEST + bytes(bad), "a.ogg") == SIX


@pytest.mark.parametrize(
    "why, data",
    [
        ("a second logical stream", HONEST + ogg(PACKETS[:10], serial=8)),
        ("a chained stream after the end of the first", HONEST + ogg(PACKETS[:5], serial=9)),
        ("Vorbis", page([b"\x01vorbis" + bytes(23)], flags=2) + HONEST[47:]),
        ("three channels", ogg(PACKETS, head=opus_head(channels=3))),
        ("channel mapping family 1", ogg(PACKETS, head=opus_head(channels=2, family=1) + b"\x01\x01\x00\x01")),
        ("no beginning-of-stream flag", page([opus_head()]) + HONEST[47:]),
        ("a first page whose CRC does not match", HONEST[:22] + b"\0\0\0\0" + HONEST[26:]),
        ("junk before the first page", b"\0" + HONEST),
        ("MPEG-TS packets in the first MiB", HONEST + (b"\x47" + bytes(187)) * 40),
        ("nothing but headers", ogg([])),
    ],
)
def test_what_keyplane_cannot_bound_in_ogg_is_not_measured(why, data):
    assert duration(data, "a.ogg") is None, why


def test_an_ogg_file_is_measured_only_under_an_ogg_name():
    for name in ("a.ogg", "b.oga", "c.opus", None):
        assert duration(HONEST, name) == SIX
    for name in ("a.webm", "a.mp3", "a.wav", "ogg"):
        assert duration(HONEST, name) is None
        m = Meter(name)
        m.feed(HONEST[:100])
        assert not m.hopeful


# --- WebM --------------------------------------------------------------------------------------------


def _vint(n: int, width: int = 0) -> bytes:
    width = width or next(w for w in range(1, 9) if n < (1 << (7 * w)) - 1)
    return ((1 << (7 * width)) | n).to_bytes(width, "big")


def el(eid: int, payload: bytes = b"", unknown: bool = False) -> bytes:
    """An EBML element (``unknown``: of unknown size, its payload what follows it)."""
    return (
        eid.to_bytes((eid.bit_length() + 7) // 8, "big")
        + (b"\x01" + b"\xff" * 7 if unknown else _vint(len(payload)))
        + payload
    )


def uint(eid: int, v: int) -> bytes:
    return el(eid, v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big"))


def ebml_header(doctype: bytes = b"webm") -> bytes:
    return el(
        0x1A45DFA3,
        uint(0x4286, 1)
        + uint(0x42F7, 1)
        + uint(0x42F2, 4)
        + uint(0x42F3, 8)
        + el(0x4282, doctype)
        + uint(0x4287, 4)
        + uint(0x4285, 2),
    )


def track(codec: bytes = b"A_OPUS", private: bytes | None = None, number: int = 1, extra: bytes = b"") -> bytes:
    private = opus_head() if private is None else private
    audio = el(0xE1, el(0xB5, struct.pack(">d", 48000.0)) + uint(0x9F, 1))
    return el(
        0xAE,
        uint(0xD7, number) + uint(0x73C5, 99) + uint(0x83, 2) + el(0x86, codec) + el(0x63A2, private) + audio + extra,
    )


def simple_block(payload: bytes, tc: int = 0, track_number: int = 1, lacing: int = 0) -> bytes:
    return el(0xA3, _vint(track_number) + struct.pack(">h", tc) + bytes([0x80 | lacing << 1]) + payload)


def webm(blocks: list[bytes], tracks: bytes | None = None, per_cluster: int = 50, known: bool = False) -> bytes:
    """What MediaRecorder writes: a Segment and Clusters of unknown size; ``known``: what ffmpeg writes, sizes,
    a SeekHead first (its SeekIDs are top-level IDs), Cues and Tags last."""
    info = el(0x1549A966, uint(0x2AD7B1, 1000000) + el(0x4D80, b"Chrome") + el(0x5741, b"Chrome"))
    seek = b"".join(el(0x4DBB, el(0x53AB, i.to_bytes(4, "big")) + uint(0x53AC, 99)) for i in (0x1549A966, 0x1C53BB6B))
    body = (el(0x114D9B74, seek) if known else b"") + info + el(0x1654AE6B, tracks if tracks is not None else track())
    for i in range(0, len(blocks), per_cluster):
        cluster = uint(0xE7, i * 20) + b"".join(blocks[i : i + per_cluster])
        body += el(0x1F43B675, cluster) if known else el(0x1F43B675, unknown=True) + cluster
    if known:
        body += el(0x1C53BB6B, el(0xBB, uint(0xB3, 0) + el(0xB7, uint(0xF7, 1) + uint(0xF1, 99))))
        body += el(0x1254C367, el(0x7373, el(0x67C8, el(0x45A3, b"DURATION") + el(0x4487, b"00:00:01.000"))))
    return ebml_header() + (el(0x18538067, body) if known else el(0x18538067, unknown=True) + body)


BLOCKS = [simple_block(p, tc=20 * (i % 50)) for i, p in enumerate(PACKETS)]
RECORDED = webm(BLOCKS)  # ffmpeg: 5.9935 s


def test_a_webm_recording_is_its_blocks_toc_sum_fed_whole_or_in_pieces():
    assert duration(RECORDED, "voice.webm") == SIX
    assert duration(webm(BLOCKS, known=True), "voice.weba") == SIX
    for step in (1, 13, 4096):
        m = Meter("voice.webm")
        for i in range(0, len(RECORDED), step):
            m.feed(RECORDED[i : i + step])
            assert m.hopeful
        assert m.result() == SIX, step


def test_laced_blocks_count_every_frame():
    a, b, c = packet(CELT20, 30, seed=1), packet(CELT20, 70, seed=2), packet(SILK60, 301, seed=3)
    xiph = bytes([2, len(a), 70]) + a + b + c
    ebml = bytes([2]) + _vint(len(a)) + _vint(len(b) - len(a) + 8191, 2) + a + b + c
    fixed = bytes([2]) + a + a + a
    blocks = [simple_block(xiph, lacing=1), simple_block(ebml, lacing=3), simple_block(fixed, lacing=2)]
    # ffmpeg: 0.3035 s (the three blocks' 100 + 100 + 60 ms, less the pre-skip)
    assert duration(webm(blocks), "a.webm") == 260 * MS + MARGIN


def test_what_a_webm_file_says_of_itself_changes_nothing():
    # block timecodes that jump back and forth, and BlockGroups whose BlockDuration says 1 ms and whose
    # DiscardPadding says 10 s (ffmpeg: 5.9935 s, 6 s: the padding's trimming replaces the pre-skip's)
    jumpy = [simple_block(p, tc=(-1) ** i * 30000) for i, p in enumerate(PACKETS)]
    assert duration(webm(jumpy), "a.webm") == SIX
    grouped = [
        el(0xA0, el(0xA1, b"\x81\0\0\0" + p) + uint(0x9B, 1) + el(0x75A2, struct.pack(">q", 10**10))) for p in PACKETS
    ]
    assert duration(webm(grouped), "a.webm") == SIX
    # a CodecDelay of 1 s (ffmpeg: 5.9935 s)
    assert duration(webm(BLOCKS, tracks=track(extra=uint(0x56AA, 10**9))), "a.webm") == SIX


@pytest.mark.parametrize(
    "why, data",
    [
        ("two tracks", webm(BLOCKS, tracks=track() + track(number=2))),
        ("Vorbis", webm(BLOCKS, tracks=track(codec=b"A_VORBIS"))),
        ("no OpusHead", webm(BLOCKS, tracks=track(private=b""))),
        ("channel mapping family 1", webm(BLOCKS, tracks=track(private=opus_head(2, family=1) + b"\1\1\0\1"))),
        ("header stripping", webm(BLOCKS, tracks=track(extra=el(0x6D80, el(0x6240, el(0x5034, uint(0x4254, 3))))))),
        ("a block of another track", webm([*BLOCKS, simple_block(PACKETS[0], track_number=2)])),
        ("block additions", webm([el(0xA0, el(0xA1, b"\x81\0\0\0" + PACKETS[0]) + el(0x75A1, b""))])),
        ("a Cluster ID inside a block", webm([*BLOCKS, simple_block(b"\x1f\x43\xb6\x75" + bytes(20))])),
        ("a Cluster hidden in a Void", webm([*BLOCKS, el(0xEC, el(0x1F43B675, b"".join(BLOCKS)))])),
        ("an Opus-in-TS header", webm([*BLOCKS, simple_block(b"\x7f\xe0" + PACKETS[0])])),
        ("an element the demuxer does not know", webm([*BLOCKS, el(0x4321, b"x")])),
        ("data after the Segment", webm(BLOCKS, known=True) + el(0x1F43B675, b"".join(BLOCKS[:10]))),
        ("Matroska, not the EBML header first", b"\0" + RECORDED),
        ("another DocType", RECORDED.replace(b"webm", b"mkvx", 1)),
        ("MPEG-TS packets in the first MiB", webm([*BLOCKS, simple_block((b"\x47" + bytes(187)) * 40)])),
        ("no blocks", webm([])),
    ],
)
def test_what_keyplane_cannot_bound_in_webm_is_not_measured(why, data):
    assert duration(data, "a.webm") is None, why


def test_a_webm_file_is_measured_only_under_a_webm_name():
    assert duration(RECORDED, "a.webm") == duration(RECORDED, "a.weba") == SIX
    assert duration(RECORDED, "a.ogg") is None
    assert duration(RECORDED, "a.mka") is None


# --- through the gateway -----------------------------------------------------------------------------

PER_SECOND = 100  # whisper-1: $0.006 a minute, in micro-dollars a second


def test_the_sdk_transcribes_webm_and_ogg_under_a_spend_limit_billed_their_length(make_gateway, fake):
    srv = make_gateway(
        f'\n[[upstreams]]\nname = "fake2"\nbase_url = "{fake.base_url}"\n'
        'api_key_env = "KP_BILLING_TEST_UPSTREAM_KEY"\nmodels = ["whisper-*"]\n'
    )
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    _limit(srv, 1)  # 1 cent: 100 seconds of whisper-1

    def spent() -> tuple[int, int]:
        return srv.call(billing_of(srv).spent("project", srv.project_id))

    # a MediaRecorder WebM of 9.98 s (ffmpeg: 9.9735 s): 9.99 s measured, 10 seconds billed (`text` reports
    # no duration)
    short = webm([simple_block(packet(CELT20, seed=i)) for i in range(499)])
    out = client.audio.transcriptions.create(model="whisper-1", file=("rec.webm", short), response_format="text")
    assert "fake" in out
    assert spent() == (10 * PER_SECOND, 0)
    # an Ogg voice note of 6 s: 6.01 s, 7 seconds
    client.audio.transcriptions.create(model="whisper-1", file=("note.ogg", HONEST), response_format="text")
    assert spent() == (17 * PER_SECOND, 0)
    # over 1 MiB, `model` first (the SDK's order): spooled and measured as it streams (899 packets of 1,276
    # bytes: 17.98 s, 18 seconds; ffmpeg: 17.9735 s)
    large = webm([simple_block(packet(CELT20, 1276, seed=i)) for i in range(899)], known=True)
    assert len(large) > 1 << 20
    client.audio.transcriptions.create(model="whisper-1", file=("rec.webm", large), response_format="text")
    assert spent() == (35 * PER_SECOND, 0)
    # what it cannot bound is still refused before the upstream
    sent = len(fake.model_requests())
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.audio.transcriptions.create(model="whisper-1", file=("rec.webm", HONEST), response_format="text")
    assert e.value.code == "cost_not_bounded"
    assert len(fake.model_requests()) == sent
