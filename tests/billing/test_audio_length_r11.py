"""Red team round 11: a differential campaign of billing/audio_length.py against ffmpeg 5.1 (Debian 12).

Each file here was decoded with ``ffmpeg -v error -i FILE -ac 1 -ar 48000 -f s16le -`` (the file named by
its extension, ffmpeg sniffing its format), the decoded duration being the PCM bytes / 2 / 48000; the
constants are what it gave. ffmpeg is not needed to run these tests.
"""

from __future__ import annotations

import struct
from fractions import Fraction

from keyplane.billing.audio_length import duration

_PCM_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


def wav_extensible(bits: int, valid: int, data: bytes, tag: int = 1) -> bytes:
    """A mono 8 kHz WAVE_FORMAT_EXTENSIBLE file whose wValidBitsPerSample differs from wBitsPerSample."""
    fmt = struct.pack("<HHIIHH", 0xFFFE, 1, 8000, 8000 * bits // 8, bits // 8, bits)
    fmt += struct.pack("<HHIH", 22, valid, 4, tag) + _PCM_GUID_TAIL
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_extensible_wav_is_decoded_at_its_valid_bits():
    """ffmpeg (parse_waveformatex) takes wValidBitsPerSample, when not 0, as the sample size: 64-bit
    samples with 8 valid bits are decoded as pcm_u8, eight times as long as the container size says."""
    f = wav_extensible(64, 8, b"\x80" * 8000)
    decoded = Fraction(1)  # ffmpeg: pcm_u8, 8000 Hz: 1.0 s
    assert duration(f, "a.wav") >= decoded
    f = wav_extensible(32, 16, bytes(8000))
    decoded = Fraction(1, 2)  # ffmpeg: pcm_s16le, 8000 Hz: 0.5 s
    assert duration(f, "a.wav") >= decoded
    f = wav_extensible(64, 32, bytes(8000), tag=3)
    decoded = Fraction(1, 4)  # ffmpeg: pcm_f32le (measured 0.25 s)
    assert duration(f, "a.wav") >= decoded
    assert duration(wav_extensible(32, 0, bytes(8000)), "a.wav") == Fraction(1, 4)  # 0: wBitsPerSample
    assert duration(wav_extensible(64, 40, bytes(8000)), "a.wav") is None  # 5-byte samples: no decoder


# MPEG-1 layer III, 128 kbit/s, 44.1 kHz (417 bytes) whose bytes 3-6 read, as an ADTS header, a 417-byte
# frame: the AAC demuxer steps over each MP3 frame to the ADTS frames after them.
MP3 = b"\xff\xfb\x90\xc0\x34\x20" + bytes(411)
ADTS = bytes.fromhex("fff17040017ffc01182007")  # one silent AAC frame: 1024 samples at 7350 Hz (ffmpeg's aac)
GSM = b"\xd8" + bytes(32)  # one GSM 06.10 block: 160 samples at 8 kHz


def id3(size: int) -> bytes:
    return b"ID3\x04\x00\x00" + bytes([0, 0, size >> 7, size & 0x7F]) + bytes(size)


def test_mp3_that_the_adts_demuxer_claims_is_not_measured():
    """Four MP3 frames and then ADTS frames: ffmpeg's MP3 probe scores the four frames low (it wants seven
    chained at the start) and the ADTS probe's 100+ chained frames win: it is decoded as AAC."""
    f = MP3 * 4 + ADTS * 3000
    decoded = 417.9591875  # ffmpeg: format aac, 7350 Hz; keyplane measured 4 frames (0.104 s)
    m = duration(f, "a.mp3")
    assert m is None or m >= decoded
    # two ID3v2 tags: ffmpeg's probe skips the first only, the MP3 probe meets the second: no frames at all
    f = id3(20) + id3(20) + MP3 * 10 + ADTS * 3000
    decoded = 417.9591875  # ffmpeg: format aac, 7350 Hz; keyplane measured 10 frames (0.261 s)
    m = duration(f, "a.mp3")
    assert m is None or m >= decoded


def test_mp3_that_the_gsm_demuxer_claims_is_not_measured():
    """GSM blocks at a 33-byte stride from the start of the probe: ffmpeg's GSM probe (a 0xD0 nibble at
    the start of 32 of 33 blocks) beats four MP3 frames, and each 33 bytes decode to 20 ms."""
    f = MP3 * 4 + bytes(33 - 4 * 417 % 33) + GSM * 3000
    decoded = 61.02  # ffmpeg: format gsm, 8000 Hz; keyplane measured 4 frames (0.104 s)
    m = duration(f, "a.mp3")
    assert m is None or m >= decoded


def test_mp3_with_seven_chained_frames_is_still_measured():
    """Seven chained frames first: ffmpeg's MP3 probe wins (0.183 s decoded), keyplane measures them."""
    assert duration(MP3 * 7, "a.mp3") == 7 * Fraction(1152, 44100)
    assert duration(MP3 * 7 + ADTS * 3000, "a.mp3") is None  # the ADTS frames could still be claimed


# MPEG-1 layer III, 44.1 kHz, 128 kbit/s, stereo (417 bytes), and MPEG-2.5 layer III, 12 kHz, 64 kbit/s, stereo
# (384 bytes): each frame silent (zero side information and main data).
_MP3_44K = b"\xff\xfb\x90\x00" + bytes(417 - 4)
_MP3_12K = b"\xff\xe3\x84\x00" + bytes(384 - 4)


def test_mp3_frames_switching_sample_rate_count_the_decoders_extra():
    """ffmpeg rebuilds its filter graph at each sample rate switch (its resampler flushed), and writes 16 to 51 ms
    more per switch than the frames hold: counting the frames alone measured this file at 1.587 s, ffmpeg decodes
    1.750 s (``-ac 1 -ar 16000``) and 1.755 s natively (stereo at 44.1 kHz: PCM bytes / 4 / 44100). Each switch
    now counts 100 ms more (billing/audio_length.py _SWITCH_TICKS); a file of one rate is measured as before."""
    switching = b"".join((_MP3_44K if i % 2 == 0 else _MP3_12K) * 4 for i in range(11))  # 10 switches
    decoded = Fraction(1755, 1000)
    assert duration(switching, "s.mp3") >= decoded
    steady = _MP3_44K * 40
    assert duration(steady, "s.mp3") == Fraction(40 * 1152, 44100)  # ffmpeg: 1.0449 s either way
