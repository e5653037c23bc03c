"""The length of an uploaded audio file, an upper bound of what a decoder decodes from its bytes (issue 17):
billing/audio_length.py, and how a transcription is quoted from it (billing/quote_media.py) and measured as a
multipart body is read (proxy/multipart.py, proxy/multipart_stream.py).

Files are made here: WAV with Python's ``wave`` module (then edited to lie), MPEG audio from hand-built frame
headers with zero payloads.
"""

from __future__ import annotations

import io
import struct
import wave
from fractions import Fraction

import pytest

from keyplane.billing.audio_length import Meter, duration
from keyplane.billing.config import Price as PriceConfig
from keyplane.billing.prices import PriceTable
from keyplane.billing.quote_media import quote_transcription
from keyplane.proxy import multipart
from keyplane.proxy.multipart_stream import Parser

# --- WAV ------------------------------------------------------------------------------------------


def wav(seconds: float, rate: int = 8000, width: int = 2, channels: int = 1) -> bytes:
    b = io.BytesIO()
    with wave.open(b, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\x01" * int(seconds * rate) * width * channels)
    return b.getvalue()


def _data_at(f: bytes) -> int:
    return f.index(b"data") + 8


def chunk(cid: bytes, body: bytes) -> bytes:
    return cid + struct.pack("<I", len(body)) + body


def fmt(tag: int, channels: int, rate: int, bits: int, extra: bytes = b"") -> bytes:
    align = channels * ((bits + 7) // 8)
    return chunk(b"fmt ", struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits) + extra)


def riff(*chunks: bytes, magic: bytes = b"RIFF") -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return magic + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    "rate,width,channels", [(8000, 1, 1), (16000, 2, 1), (44100, 2, 2), (48000, 3, 2), (22050, 4, 1)]
)
def test_wav_is_its_samples_at_its_rate(rate, width, channels):
    assert duration(wav(3, rate, width, channels)) == 3
    assert duration(wav(2.5, rate, width, channels)) == Fraction(5, 2)


def test_wav_header_lying_short_is_measured_by_the_bytes_present():
    f = bytearray(wav(30))
    at = _data_at(f)
    f[at - 4 : at] = struct.pack("<I", 16000)  # the data chunk says 1 s
    f[4:8] = struct.pack("<I", 16036)  # and so does the RIFF size
    assert duration(bytes(f)) == 30
    f[at - 4 : at] = b"\0\0\0\0"  # 0 (ffmpeg: to the end of the file)
    assert duration(bytes(f)) == 30


def test_wav_header_lying_long_is_measured_by_the_bytes_present():
    f = bytearray(wav(2))
    at = _data_at(f)
    f[at - 4 : at] = struct.pack("<I", 16000 * 3600)  # says an hour: a decoder reads what is there
    assert duration(bytes(f)) == 2
    assert duration(bytes(f[: at + 8000])) == Fraction(1, 2)  # truncated: what is left


def test_wav_counts_every_byte_after_the_data_chunk_start():
    """ffmpeg goes on to a later data chunk after the first one ends: both are counted, and what trails."""
    f = wav(1) + chunk(b"data", b"\0" * 16000) + chunk(b"LIST", b"INFO" + b"\0" * 4)
    assert duration(f) == Fraction(32000 + 8 + 8 + 8, 16000)
    assert duration(f) >= 2


def test_wav_decoder_sample_size_not_the_declared_byte_rate():
    # fmt says 1 byte/s and a block align of 1000: ffmpeg decodes 16-bit mono at 8000 Hz all the same
    f = riff(chunk(b"fmt ", struct.pack("<HHIIHH", 1, 1, 8000, 1, 1000, 16)), chunk(b"data", b"\0" * 16000))
    assert duration(f) == 1
    # 12-bit samples are decoded as 16-bit ones
    assert duration(riff(fmt(1, 1, 8000, 12), chunk(b"data", b"\0" * 16000))) == 1


def test_wav_float_alaw_mulaw_and_extensible():
    assert duration(riff(fmt(3, 2, 8000, 32), chunk(b"data", b"\0" * 64000))) == 1
    assert duration(riff(fmt(6, 1, 8000, 8), chunk(b"data", b"\0" * 8000))) == 1
    assert duration(riff(fmt(7, 1, 8000, 16), chunk(b"data", b"\0" * 8000))) == 1  # mu-law: a byte a sample
    guid = struct.pack("<H", 1) + bytes.fromhex("000000001000800000aa00389b71")
    ext = struct.pack("<HHI", 22, 16, 4) + guid
    assert duration(riff(fmt(0xFFFE, 1, 8000, 16, ext), chunk(b"data", b"\0" * 16000))) == 1
    bad_guid = struct.pack("<HHI", 22, 16, 4) + b"\x01\x00" + b"\x11" * 14
    assert duration(riff(fmt(0xFFFE, 1, 8000, 16, bad_guid), chunk(b"data", b"\0" * 16000))) is None


def test_wav_metadata_chunks_before_data_are_skipped():
    f = riff(chunk(b"LIST", b"INFOISFT" + b"\0" * 8), fmt(1, 1, 8000, 16), chunk(b"fact", b"\1\0\0\0"))
    assert duration(f + chunk(b"data", b"\0" * 16000)) == 1


def test_rf64_is_measured_by_its_bytes():
    ds64 = chunk(b"ds64", struct.pack("<QQQI", 0, 1, 1, 0))  # declares 1 byte of data and 1 sample
    f = riff(ds64, fmt(1, 1, 8000, 16), b"data\xff\xff\xff\xff" + b"\0" * 32000, magic=b"RF64")
    assert duration(f) == 2
    assert duration(riff(fmt(1, 1, 8000, 16), chunk(b"data", b"\0" * 16000), magic=b"RF64")) is None  # no ds64


@pytest.mark.parametrize(
    "f",
    [
        riff(chunk(b"data", b"\0" * 16000), fmt(1, 1, 8000, 16)),  # data before fmt
        riff(fmt(1, 1, 8000, 16), fmt(1, 1, 8000, 16), chunk(b"data", b"\0" * 16000)),  # two fmt
        riff(fmt(1, 1, 8000, 16), chunk(b"LIST", b"odd"), b"\0", chunk(b"data", b"\0" * 16000)),  # odd size
        riff(chunk(b"XMA2", b"\0" * 34), fmt(1, 1, 8000, 16), chunk(b"data", b"\0" * 16000)),  # another codec
        riff(fmt(2, 1, 8000, 4), chunk(b"data", b"\0" * 16000)),  # MS ADPCM: samples per block are declared
        riff(fmt(0x55, 1, 8000, 0), chunk(b"data", b"\0" * 16000)),  # MP3 in WAV
        riff(fmt(1, 1, 8000, 40), chunk(b"data", b"\0" * 16000)),  # 5-byte samples: no decoder
        riff(fmt(1, 0, 8000, 16), chunk(b"data", b"\0" * 16000)),  # no channel
        riff(fmt(1, 1, 8000, 16)),  # no data chunk
        b"RIFX" + riff(fmt(1, 1, 8000, 16), chunk(b"data", b"\0" * 16000))[4:],  # big-endian
    ],
)
def test_wavs_keyplane_does_not_bound(f):
    assert duration(f) is None


def test_a_wav_the_act_demuxer_would_claim_is_not_bounded():
    """ffmpeg's ACT probe (G.729 behind a WAV header, 10 bytes per 10 ms) scores above WAV's."""
    f = bytearray(wav(2))
    assert duration(bytes(f)) == 2
    f[256] = 0x84
    f[44:256] = bytes(212)
    assert duration(bytes(f)) is None


def test_a_wav_carrying_spdif_bursts_is_not_bounded():
    """IEC 61937 sync words in 16-bit PCM: ffmpeg decodes the compressed bursts, at their own rate."""
    f = bytearray(wav(10))
    assert duration(bytes(f)) == 10
    f[100_000:100_004] = b"\x72\xf8\x1f\x4e"
    assert duration(bytes(f)) is None
    m = Meter()  # split across two chunks
    m.feed(bytes(f[:100_002]))
    m.feed(bytes(f[100_002:]))
    assert m.result() is None


# --- MPEG audio -----------------------------------------------------------------------------------

L3_128 = b"\xff\xfb\x90\x64"  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz: 417 bytes, 1152 samples
L3_64_PAD = b"\xff\xfb\x52\x64"  # MPEG-1 layer III, 64 kbit/s, 44.1 kHz, padded: 209 bytes
L3_320_48 = b"\xff\xfb\xe4\x64"  # MPEG-1 layer III, 320 kbit/s, 48 kHz: 960 bytes
L2_384_32 = b"\xff\xfd\xe8\x04"  # MPEG-1 layer II, 384 kbit/s, 32 kHz: 1728 bytes, 1152 samples
M25_8K = b"\xff\xe3\x18\xc4"  # MPEG-2.5 layer III, 8 kbit/s, 8 kHz: 72 bytes, 576 samples (72 ms)
SIZES = {L3_128: 417, L3_64_PAD: 209, L3_320_48: 960, L2_384_32: 1728, M25_8K: 72}
SECONDS = {
    L3_128: Fraction(1152, 44100),
    L3_64_PAD: Fraction(1152, 44100),
    L3_320_48: Fraction(1152, 48000),
    L2_384_32: Fraction(1152, 32000),
    M25_8K: Fraction(576, 8000),
}


def frame(header: bytes, payload: bytes = b"") -> bytes:
    size = SIZES[header]
    return header + payload + bytes(size - 4 - len(payload))


def id3v2(size: int, footer: bool = False) -> bytes:
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return (
        b"ID3\x04\x00"
        + (b"\x10" if footer else b"\x00")
        + syncsafe
        + b"T" * size
        + (b"3DI" + bytes(7) if footer else b"")
    )


def test_cbr_is_its_frames():
    assert duration(frame(L3_128) * 100) == 100 * SECONDS[L3_128]
    assert duration(frame(M25_8K) * 1000) == 72


SWITCH = Fraction(1, 10)  # each sample rate change (billing/audio_length.py _SWITCH_TICKS)


def test_vbr_sums_each_frame():
    seq = [L3_128, L3_64_PAD, L3_128, L3_128, L3_64_PAD] * 40
    f = b"".join(frame(h) for h in seq)
    assert duration(f) == 200 * Fraction(1152, 44100)
    f = frame(L3_320_48) * 4 + frame(L3_128) * 10  # a sample rate change half way: each at its own,
    # and the switch counts what a resampling decoder writes more (round 11: billing/audio_length.py _SWITCH_TICKS)
    assert duration(f) == 4 * SECONDS[L3_320_48] + 10 * SECONDS[L3_128] + SWITCH


def test_id3v2_tags_first_are_skipped():
    f = frame(L3_128) * 50
    assert duration(id3v2(3000) + f) == duration(f) == 50 * SECONDS[L3_128]
    assert duration(id3v2(100, footer=True) + id3v2(20) + f) == duration(f)
    assert duration(id3v2(2 << 20) + f) is None  # its frames start past what keyplane checks
    assert duration(b"ID3\xff" + f) is None


def test_junk_between_frames_counts_only_as_far_as_it_decodes():
    f = frame(L3_128) * 10 + b"junk" * 100 + frame(L3_128) * 10
    assert duration(f) == 20 * SECONDS[L3_128]
    # junk that holds a frame header: a decoder resyncing there decodes it, so it counts
    f = frame(L3_128) * 10 + b"junk" * 10 + M25_8K + b"junk" * 20 + frame(L3_128) * 10
    assert duration(f) == 20 * SECONDS[L3_128] + SECONDS[M25_8K] + 2 * SWITCH  # to 8 kHz and back


def test_frames_hidden_inside_a_frame_count_as_a_resyncing_decoder_could_take_them():
    """A big frame whose payload holds small, long frames: a decoder that rejects the big one's header (or
    starts inside it) decodes the small ones. The bound is the longest chain, whichever way it is read."""
    hidden = frame(M25_8K) * 23  # 1656 bytes: 23 x 72 ms
    f = frame(L3_128) * 4 + frame(L2_384_32, hidden[:1724]) + frame(L3_128) * 4
    assert duration(f) >= 8 * SECONDS[L3_128] + 23 * SECONDS[M25_8K] > 9 * SECONDS[L3_128]


def test_a_lying_xing_header_changes_nothing():
    def xing(frames: int) -> bytes:  # MPEG-1 stereo: the tag 32 bytes after the header
        return frame(L3_128, bytes(32) + b"Xing" + struct.pack(">II", 1, frames))

    body = frame(L3_128) * 99
    assert duration(xing(1) + body) == 100 * SECONDS[L3_128]  # says 1 frame
    assert duration(xing(10**9) + body) == 100 * SECONDS[L3_128]  # says a million hours
    vbri = frame(L3_128, bytes(32) + b"VBRI" + struct.pack(">HHHII", 1, 0, 0, 417, 1))
    assert duration(vbri + body) == 100 * SECONDS[L3_128]


def test_a_truncated_last_frame_counts_whole():
    f = frame(L3_128) * 10
    assert duration(f + frame(L3_128)[:200]) == 11 * SECONDS[L3_128]
    assert duration(f + L3_128) == 11 * SECONDS[L3_128]  # a header alone
    assert duration(f + L3_128[:3]) == 10 * SECONDS[L3_128]  # not even a header


def test_incremental_is_the_whole():
    f = id3v2(500) + b"".join(frame(h) for h in [L3_128, L3_64_PAD, L3_128, L3_128] * 30) + b"junk" + L3_128
    whole = duration(f)
    for size in (1, 3, 7, 416, 4096):
        m = Meter()
        for i in range(0, len(f), size):
            m.feed(f[i : i + size])
        assert m.result() == whole
    w = wav(5, 16000)
    m = Meter()
    for i in range(0, len(w), 333):
        m.feed(w[i : i + 333])
    assert m.result() == 5


def test_a_long_file_streams_through_a_meter():
    """Past the first MiB (what is checked and held), the rest is only scanned."""
    m = Meter()
    one = frame(L3_128) * 1000
    for _ in range(5):
        m.feed(one)
    assert m.result() == 5000 * SECONDS[L3_128]
    m = Meter()
    for _ in range(3):
        m.feed(wav(40, 16000))  # the later copies are data too
    assert m.result() == Fraction(3 * len(wav(40, 16000)) - 44, 32000)


@pytest.mark.parametrize(
    "f",
    [
        b"junk" + frame(L3_128) * 10,  # does not start with a frame
        frame(L3_128) * 3,  # too few frames to be sure of it
        frame(L3_128) * 2 + frame(L3_320_48) * 4,  # the first frames disagree
        frame(L3_128) + b"xx" + frame(L3_128) * 4,  # not chained
        b"\xff\xfb\x00\x64" + bytes(413) + frame(L3_128) * 5,  # free format (ffmpeg's parser skips it)
        frame(L3_128, b"\0\0\x01\xba") * 10,  # MPEG-PS pack headers: the PS demuxer may win
        frame(L3_128, b"ftyp") * 10,  # an ISO BMFF box name at offset 4
        frame(L3_128, b"\x72\xf8\x1f\x4e") * 10,  # S/PDIF bursts
        frame(L3_128, b"\xf8\x72\x6f\xba") * 10,  # TrueHD frames (its probe scores above MP3)
        frame(L3_128, b"\x7f\xfe\x80\x01") * 10,  # DTS frames
    ],
)
def test_mpeg_audio_keyplane_does_not_bound(f):
    assert duration(f) is None


def test_one_or_two_start_codes_are_chance():
    f = frame(L3_128) * 10
    assert duration(frame(L3_128, b"\0\0\x01\xba") + f) == 11 * SECONDS[L3_128]
    assert duration(frame(L3_128, b"\0\0\x01\xba") * 2 + f) == 12 * SECONDS[L3_128]
    assert duration(frame(L3_128, b"\0\0\x01\xba") * 3 + f) is None


def test_mpeg_ts_packets_inside_the_frames_are_not_bounded():
    f = bytearray(frame(L3_128) * 100)
    for i in range(2000, len(f), 188):
        if f[i] == 0:
            f[i] = 0x47
    assert duration(bytes(f)) is None


def test_headers_every_few_bytes_are_given_up():
    f = frame(L3_128) * 4 + M25_8K * 50_000  # a header every 4 bytes: 50,000 candidate frames
    assert duration(f) is None


@pytest.mark.parametrize(
    "f",
    [
        b"",
        b"\0\0\0\x18ftypmp42" + bytes(1000),  # mp4 / m4a
        b"OggS" + bytes(1000),
        b"fLaC" + bytes(1000),
        b"\x1a\x45\xdf\xa3" + bytes(1000),  # webm
        b"x" * 1000,
        b"RIFF",
        b"\xff",
    ],
)
def test_other_formats_are_unknown(f):
    assert duration(f) is None
    m = Meter()
    for b in f:
        m.feed(bytes([b]))
    assert m.result() is None


# --- the quote ------------------------------------------------------------------------------------

H = [(b"content-type", b"multipart/form-data; boundary=XyZ")]


def body(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--XyZ\r\nContent-Disposition: {disp}\r\n\r\n".encode() + content + b"\r\n"
    return out + b"--XyZ--\r\n"


def test_a_measured_transcription_is_quoted_by_its_length():
    prices = PriceTable.from_config({})
    form = multipart.text_fields(H, body(("model", None, b"whisper-1"), ("file", "a.wav", wav(30.2))))
    q = quote_transcription(prices, "whisper-1", form, 10**6)
    assert (q.cost, q.units, q.estimate, q.flat) == (31 * 100, 31, None, True)  # $0.006/min: 100 micro a second
    # unmeasured: the size estimate, as before
    q = quote_transcription(prices, "whisper-1", {"model": "whisper-1"}, 10**6)
    assert q.estimate is not None and q.units == 17 * 60
    # max_seconds caps it (a longer file is refused by the provider)
    capped = PriceTable.from_config({"whisper-1": PriceConfig(per_minute=0.006, max_seconds=10)})
    assert quote_transcription(capped, "whisper-1", form, 10**6).units == 10
    # token-priced: its token bound, unchanged
    q = quote_transcription(prices, "gpt-4o-transcribe", form, 10**6)
    assert q.price is not None and not q.flat and q.cost == prices.lookup("gpt-4o-transcribe").max_cost(16000, 2000)


def test_only_a_lone_file_part_named_file_is_measured():
    w = ("file", "a.wav", wav(3))
    assert multipart.text_fields(H, body(("model", None, b"whisper-1"), w)).audio_length() == 3
    assert multipart.text_fields(H, body(w, ("model", None, b"whisper-1"))).audio_length() == 3
    assert multipart.text_fields(H, body(w, ("other", "b.wav", wav(1)))).audio_length() is None
    assert multipart.text_fields(H, body(("audio", "a.wav", wav(3)))).audio_length() is None
    assert multipart.text_fields(H, body(("model", None, b"whisper-1"))).audio_length() is None


def test_the_file_name_must_name_the_format_found():
    """A provider that picks its demuxer by the extension would read a WAV named .mp3 as MPEG audio (whose
    parser finds frames in PCM samples), and MPEG audio named .wav as neither."""
    mp3 = frame(L3_128) * 10
    assert duration(wav(3), "a.wav") == duration(wav(3), "A.WAV") == 3
    assert duration(mp3, "a.mp3") == duration(mp3, "a.mpga") == 10 * SECONDS[L3_128]
    for data, name in ((wav(3), "a.mp3"), (wav(3), "a"), (wav(3), "a.wav.m4a"), (mp3, "a.wav"), (mp3, "a.mpeg")):
        assert duration(data, name) is None
    assert multipart.text_fields(H, body(("file", "a.mp3", wav(3)))).audio_length() is None
    p = _stream(body(("file", "a.mp3", wav(3))), 1000)
    p.end()
    assert p.audio_length() is None


def _stream(b: bytes, size: int, audio: bool = True) -> Parser:
    p = Parser(b"XyZ", lambda name, value, files: None, audio=audio)
    for i in range(0, len(b), size):
        p.feed(b[i : i + size])
    return p


def test_the_streaming_parser_measures_the_file_part_as_it_passes():
    b = body(("model", None, b"whisper-1"), ("file", "a.mp3", frame(L3_128) * 200), ("language", None, b"en"))
    for size in (1, 100, 65536):
        p = _stream(b, size)
        p.end()
        assert p.audio_length() == 200 * SECONDS[L3_128]
    assert _stream(b, 1000, audio=False).audio_length() is None
    p = _stream(b[: len(b) // 2], 1000)  # the file part has not ended
    assert p.audio_length() is None
    p = _stream(body(("file", "a.wav", wav(2)), ("file2", "b.wav", wav(1))), 1000)
    assert p.audio_length() is None  # two files
    p = _stream(body(("file", None, b"x"), ("f", "a.wav", wav(2))), 1000)
    assert p.audio_length() is None
    p = _stream(b, 1000)
    p.stop_audio()
    assert p.audio_length() is None


# --- the bound holds however a decoder walks the bytes ----------------------------------------------


def _parser_walk(data: bytes, start: int) -> Fraction:
    """ffmpeg's mpegaudio_parse from ``start``: slide a 4-byte window until a valid header, take the frame
    (cut at the end counts whole), look again right after it; free format and invalid headers are skipped."""
    from keyplane.billing.audio_formats import MPA, TICKS

    total, i = 0, start
    while i + 4 <= len(data):
        e = MPA[data[i + 1] << 8 | data[i + 2]] if data[i] == 0xFF and data[i + 1] >= 0xE0 else None
        if e is None:
            i += 1
            continue
        total += e[1]
        i += e[0]
    return Fraction(total, TICKS)


def test_the_bound_covers_a_parser_starting_anywhere():
    import random

    rnd = random.Random(17)
    kinds = list(SIZES)
    for _ in range(40):
        parts = [frame(L3_128) * 4]
        for _ in range(rnd.randrange(5, 40)):
            r = rnd.random()
            if r < 0.6:
                parts.append(frame(rnd.choice(kinds)))
            elif r < 0.8:
                parts.append(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300))))
            else:  # a frame whose payload hides other headers
                inner = b"".join(frame(M25_8K) for _ in range(rnd.randrange(1, 20)))
                parts.append(frame(L2_384_32, inner[: SIZES[L2_384_32] - 4]))
        f = b"".join(parts)
        f = f.replace(b"\0\0\x01", b"\0\0\x02").replace(b"\x72\xf8\x1f\x4e", b"\x72\xf8\x1f\x4f")
        bound = duration(f)
        if bound is None:  # (a random TS-like pattern or the like)
            continue
        for start in [0, *rnd.sample(range(len(f)), 30)]:
            assert bound >= _parser_walk(f, start)


def test_mangled_files_never_raise():
    import random

    rnd = random.Random(5)
    seeds = [
        wav(1),
        riff(fmt(0xFFFE, 2, 8000, 16, b"\x16\x00" + bytes(22)), chunk(b"data", bytes(100))),
        frame(L3_128) * 8,
    ]
    for _ in range(300):
        f = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randrange(1, 8)):
            at = rnd.randrange(len(f))
            f[at : at + rnd.randrange(1, 5)] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 5)))
        f = bytes(f[: rnd.randrange(len(f) + 1)])
        r = duration(f)
        assert r is None or r >= 0
        m = Meter()
        for i in range(0, len(f), 37):
            m.feed(f[i : i + 37])
        assert m.result() == r
