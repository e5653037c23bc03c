"""How long an uploaded audio file can play: an upper bound of what a decoder (ffmpeg, which the provider
uses) decodes from the bytes actually sent, or None when keyplane cannot bound it (issue 17).

The bytes are the client's: nothing the file *declares* about its own length is used (a WAV data chunk's
size, a ``fact`` sample count, an MP3 Xing/Info/VBRI frame count), since a lying header must never make the
file reserve less than it plays. What is counted instead:

- **WAV** (``RIFF``/``RF64``/``BW64`` ... ``WAVE``; PCM, IEEE float, A-law, mu-law, also as
  WAVE_FORMAT_EXTENSIBLE): every byte from the start of the first ``data`` chunk's content to the end of
  the file, at the sample size and rate of the ``fmt`` chunk (the decoder's own: ``channels x ceil(bits/8)``
  bytes per sample frame, the bits an extensible format's valid bits when set; never the declared byte rate
  or block align). ffmpeg reads a data chunk whose size
  is past the end until the end, and goes on to any later data chunk: every byte after the first one's start
  is an upper bound of them all. Refused (None): a ``fmt`` chunk after ``data`` or given twice, a chunk before
  ``data`` that is not a known metadata chunk (XMA2, SMV0...) or has an odd or unknown (0xFFFFFFFF) size, a
  data chunk that does not start within the first MiB, other codecs, a file the ACT demuxer would claim
  (ffmpeg scores it above WAV: G.729 at 1 ms of audio per byte), and one carrying IEC 61937 (S/PDIF) burst
  sync words (ffmpeg decodes those as the compressed stream inside, at another rate).
- **MPEG audio** (layer I, II, III; MPEG-1, 2, 2.5; ID3v2 tags first): the most audio *any* sequence of
  frames the bytes hold can decode to. ffmpeg's parser takes a frame at every valid header it meets, skipping
  the bytes between; which headers it meets depends on where it starts and what it skipped, so every byte
  that begins a valid header (by ffmpeg's own test, ff_mpa_check_header, free-format frames excluded as its
  parser does) is a candidate and the longest chain of non-overlapping candidates is counted (a frame cut
  short by the end of the file counts whole). Junk between frames therefore counts only as far as it could
  be decoded, and a lying Xing header changes nothing. The file must start (after its ID3v2 tags) with four
  chained frames of one version, layer and sample rate, and seven of any (ffmpeg's MP3 probe), and
  its first MiB (what ffmpeg probes) must show nothing another demuxer could claim first: MPEG-PS/ES and
  H.264 start codes (00 00 01, three or more), S/PDIF, TrueHD/MLP or DTS sync words, AAC ADTS/LOAS
  frame runs, GSM blocks, MPEG-TS sync bytes at
  a packet stride, an ISO BMFF box name at offset 4. Else None.
- **FLAC** (``fLaC`` and a STREAMINFO block ffmpeg's probe takes): the block sizes of every byte that starts a
  frame header ffmpeg parses (CRC-8 included), at STREAMINFO's rate; None when one names another rate or
  channel count, or does not follow the one before it as ffmpeg's parser links frames (billing/audio_flac.py).
- **MP4/M4A** (a first ``ftyp`` box; one AAC track): the packets of the sample table, each verified to be one
  AAC block where ffmpeg's decoder ends it (it decodes every block chained in a packet), at 1024 samples over
  the AudioSpecificConfig's rate (billing/audio_mp4.py, billing/audio_aac.py).
- **Opus** in Ogg or WebM: every packet's TOC duration, of every Ogg page candidate (billing/audio_opus.py)
  or every block of a WebM read as ffmpeg's demuxer reads it (billing/audio_webm.py).
- Anything else (Ogg Vorbis, MPEG audio with junk first...): None. So is a file whose name
  (when one is given) does not end in ``.wav`` for WAV, ``.mp3``/``.mpga`` for MPEG audio, ``.flac`` for
  FLAC, ``.m4a``/``.mp4`` for MP4, ``.ogg``/``.oga``/``.opus`` for Ogg, ``.webm``/``.weba`` for WebM: a
  provider that picks the demuxer by the extension would read other bytes than keyplane measured (an MPEG
  audio parser finds frames in PCM samples).

:class:`Meter` is incremental (``feed`` chunks in order, then ``result``) so that an upload streaming
through keyplane is measured without being held: it keeps at most the first MiB (and the frames in
flight; an MP4's ``moov``, up to 8 MiB; an Ogg page, a WebM block). :func:`duration` measures bytes held
whole. Results are exact fractions of a second.
"""

from __future__ import annotations

import heapq
import logging
from fractions import Fraction
from typing import Final

from keyplane.billing import audio_flac, audio_mp4, audio_opus, audio_webm
from keyplane.billing.audio_formats import (
    BOX_NAMES,
    MPA,
    MPA_HEADER,
    SPDIF_SYNC,
    TICKS,
    act,
    after_id3,
    first_frames,
    foreign,
    mpa_start,
    u32,
)

log = logging.getLogger("keyplane.billing")

PROBE_WINDOW: Final = (1 << 20) + 64  # ffmpeg probes at most 1 MiB (its PROBE_BUF_MAX) to pick a demuxer
# Where the sample rate changes between two chained frames, a decoder that resamples (ffmpeg's filter graph is
# rebuilt, its resampler flushed) writes more than the frames hold: 16 to 51 ms per switch measured with ffmpeg
# 5.1 (to 16 kHz mono and natively); each switch counts this much more, twice the most seen.
_SWITCH_TICKS: Final = TICKS // 10

_WAV_MAGIC: Final = (b"RIFF", b"RF64", b"BW64")
# Chunks allowed before `data` besides `fmt `: metadata ffmpeg reads past (anything else may change the codec
# or the demuxer's reading: XMA2, SMV0, ...).
_WAV_META: Final = frozenset(
    {
        b"fact", b"LIST", b"JUNK", b"junk", b"PAD ", b"bext", b"cue ", b"iXML", b"ds64", b"id3 ", b"ID3 ",
        b"smpl", b"inst", b"acid", b"PEAK", b"FLLR", b"axml", b"cart", b"chna", b"umid", b"levl", b"minf",
        b"elm1", b"regn", b"DGDA",
    }
)  # fmt: skip
_PCM_GUID_TAIL: Final = bytes.fromhex("000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_* after the tag
_EXTENSIONS: Final = {
    "wav": frozenset({"wav"}),
    "mpa": frozenset({"mp3", "mpga"}),
    "flac": frozenset({"flac"}),
    "mp4": frozenset({"m4a", "mp4"}),
    **audio_opus.EXTENSIONS,
}


class Meter:
    """The audio length of one file fed in order: ``feed`` each chunk, then ``result`` once (None: unknown)."""

    def __init__(self, filename: str | None = None) -> None:
        self.filename = filename  # the upload's: its extension must name the format found (None: not checked)
        self.size = 0  # bytes fed
        self._kind = ""  # "" until the first bytes say: "wav", "mpa", "flac", "mp4", or "void" (unknown)
        self._head = bytearray()  # the first PROBE_WINDOW bytes (freed once checked)
        self._checked = False
        # WAV: where the data chunk's content starts, and the decoder's bytes per sample frame and rate
        self._data_at = -1
        self._frame_bytes = 0
        self._rate = 0
        self._carry = b""  # the last bytes of the previous chunk (a pattern or header across two chunks)
        # MPEG audio: the longest chain of frames
        # by the sample rate of its last frame: the longest chain (TICKS) of frames that ended at or before the
        # scan position (a chain that changes rate counts _SWITCH_TICKS more per change)
        self._best: dict[int, int] = {}
        self._pending: list[tuple[int, int, int]] = []  # (end, chain length, rate) of frames not yet ended
        self._candidates = 0
        self._flac = audio_flac.Flac()  # FLAC: every frame header candidate (billing/audio_flac.py)
        self._info: tuple[int, int] | None = None  # FLAC: STREAMINFO's sample rate and channels
        self._mp4 = audio_mp4.Mp4()  # MP4: its boxes and AAC blocks (billing/audio_mp4.py)
        self._opus: audio_opus.Ogg | audio_webm.Webm | None = None  # Opus in Ogg or WebM (audio_opus.py, audio_webm.py)

    @property
    def hopeful(self) -> bool:
        """What was fed so far may still be measured: not a format keyplane cannot bound, nor one its file name
        belies (an upload is spooled to be measured only while this holds: proxy/uploads.py)."""
        if self._kind == "void":
            return False
        kinds = [self._kind] if self._kind else list(_EXTENSIONS)
        return any(_named(k, self.filename) for k in kinds)

    # --- feeding ---------------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._kind == "void" or not data:
            return
        try:
            self._feed(data)
        except Exception:  # never fail an upload over its measuring: it is then priced as unmeasured
            log.exception("audio length: measuring failed")
            self._void()

    def result(self) -> Fraction | None:
        """Seconds (an upper bound), or None when the file is not one keyplane can bound."""
        try:
            return self._result()
        except Exception:
            log.exception("audio length: measuring failed")
            self._void()
            return None

    def _feed(self, data: bytes | bytearray | memoryview) -> None:
        chunk = bytes(data)
        start = self.size
        self.size += len(chunk)
        if len(self._head) < PROBE_WINDOW and not self._checked:
            self._head += chunk[: PROBE_WINDOW - len(self._head)]
        if not self._kind:
            self._sniff()
            if self._kind in ("", "void"):
                return
            # the kind is known (within its first 12 bytes): scan from the beginning of the file
            chunk, start = bytes(self._head[:start]) + chunk, 0
        if self._kind == "wav":
            self._scan_wav(chunk)
        elif self._kind == "flac":
            self._flac.feed(chunk)
            if self._flac.syncs > (self.size >> 8) + 4096:  # sync codes every few hundred bytes: not audio
                self._void()
        elif self._kind == "mp4":
            self._mp4.feed(chunk)
            if self._mp4.bad:
                self._void()
        elif self._opus is not None:
            self._opus.feed(chunk)
            if self._opus.void:
                self._void()
        else:
            self._scan_mpa(chunk, start)
        if not self._checked and len(self._head) >= PROBE_WINDOW and self._kind != "void":
            self._check_head()

    def _result(self) -> Fraction | None:
        if not self._kind:
            self._sniff(final=True)
        if self._kind in ("", "void") or not _named(self._kind, self.filename):
            return None
        if not self._checked:
            self._check_head()
            if self._kind == "void":
                return None
        if self._opus is not None:
            self._opus.end()
            return self._opus.result()
        if self._kind == "flac":
            assert self._info is not None
            self._flac.end()
            return self._flac.result(*self._info)
        if self._kind == "mp4":
            return self._mp4.result()
        if self._kind == "wav":
            if self._data_at < 0:
                return None
            data = max(0, self.size - self._data_at)
            return Fraction(-(-data // self._frame_bytes), self._rate)
        best = max([*self._best.values(), *(v for _, v, _ in self._pending)], default=0)
        return Fraction(best, TICKS) if best else None

    # --- which format ----------------------------------------------------------------------------

    def _sniff(self, final: bool = False) -> None:
        h = bytes(self._head[:12])
        if len(h) < 12 and not final:
            magic = any(h[: len(m)] == m[: len(h)] for m in (*_WAV_MAGIC, b"ID3", b"fLaC"))
            magic |= h[:4] in (audio_opus.OGG[: len(h)], audio_webm.EBML[: len(h)])  # Opus in Ogg or WebM
            if not magic and not mpa_start(h) and not b"ftyp".startswith(h[4:8]):  # (MP4: a box size, its type)
                self._kind = "void"
            return
        if h[:4] in _WAV_MAGIC and h[8:12] == b"WAVE":
            self._kind = "wav"
        elif h[4:8] == b"ftyp":
            self._kind = "mp4"
        elif h[:4] == audio_opus.OGG:  # Opus: the container checks its own probe window
            self._kind, self._opus, self._checked = "ogg", audio_opus.Ogg(), True
        elif h[:4] == audio_webm.EBML:
            self._kind, self._opus, self._checked = "webm", audio_webm.Webm(), True
        elif h[:4] == audio_flac.MAGIC:
            self._kind = "flac"
        elif h[:3] == b"ID3" or mpa_start(h):
            self._kind = "mpa"
        else:
            self._kind = "void"

    def _void(self) -> None:
        self._kind = "void"
        self._head = bytearray()
        self._pending = []
        self._flac = audio_flac.Flac()
        self._mp4 = audio_mp4.Mp4()
        self._opus = None

    def _check_head(self) -> None:
        """The checks of the first MiB (the demuxer ffmpeg picks, the WAV header, the first MPEG frames)."""
        self._checked = True
        head = bytes(self._head)
        self._head = bytearray()
        if self._kind == "wav":
            if not self._wav_header(head) or act(head):
                self._void()
            return
        if self._kind == "flac":
            self._info = audio_flac.streaminfo(head)
            if self._info is None:
                self._void()
            return
        if self._kind == "mp4":
            if audio_mp4.foreign(head):
                self._void()
            return
        at, probed = after_id3(head), after_id3(head, 1)  # ffmpeg's probe skips the first tag only
        if at is None or probed is None or not first_frames(head, at) or foreign(head[probed:]):
            self._void()

    # --- WAV -------------------------------------------------------------------------------------

    def _wav_header(self, head: bytes) -> bool:
        """Find the fmt and data chunks in the first MiB; False when the file is not a WAV keyplane bounds."""
        if head[4:8] in BOX_NAMES:  # an ISO BMFF box name where ffmpeg's mov probe looks
            return False
        pos, fmt, n = 12, False, len(head)
        riff = head[:4] == b"RIFF"
        if not riff and head[12:16] != b"ds64":  # RF64 and BW64 start with ds64 (ffmpeg requires it)
            return False
        while pos + 8 <= n:
            cid, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
            if cid == b"data":
                if not fmt:
                    return False
                self._data_at = pos + 8
                return True
            if size & 1 or size == 0xFFFFFFFF:  # padding ffmpeg may read otherwise; a size only ds64 knows
                return False
            if cid == b"fmt ":
                if fmt or pos + 8 + size > n or not self._fmt(head[pos + 8 : pos + 8 + size]):
                    return False
                fmt = True
            elif cid not in _WAV_META:
                return False
            pos += 8 + size
        return False  # no data chunk in the first MiB (or the file ends before it)

    def _fmt(self, f: bytes) -> bool:
        if len(f) < 16:
            return False
        tag, channels, rate = int.from_bytes(f[0:2], "little"), int.from_bytes(f[2:4], "little"), u32(f, 4)
        bits = int.from_bytes(f[14:16], "little")
        if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the codec is the sub-format's, the sample size its valid
            # bits (ffmpeg's parse_waveformatex takes wValidBitsPerSample when it is not 0)
            if len(f) < 40 or int.from_bytes(f[16:18], "little") < 22 or f[26:40] != _PCM_GUID_TAIL:
                return False
            tag, bits = int.from_bytes(f[24:26], "little"), int.from_bytes(f[18:20], "little") or bits
        if tag == 1 and 1 <= bits <= 64 and (bits + 7) // 8 in (1, 2, 3, 4, 8):  # PCM: u8, s16, s24, s32, s64
            sample = (bits + 7) // 8
        elif tag == 3 and bits in (32, 64):  # IEEE float
            sample = bits // 8
        elif tag in (6, 7):  # A-law, mu-law: one byte a sample whatever `bits` says
            sample = 1
        else:
            return False
        if not 1 <= channels <= 256 or rate < 1:
            return False
        self._frame_bytes, self._rate = channels * sample, rate
        return True

    def _scan_wav(self, chunk: bytes) -> None:
        """IEC 61937 sync words anywhere in the file: ffmpeg would decode the bursts, not the PCM."""
        if SPDIF_SYNC in self._carry + chunk:
            self._void()
            return
        self._carry = (self._carry + chunk)[-3:]

    # --- MPEG audio ------------------------------------------------------------------------------

    def _scan_mpa(self, chunk: bytes, start: int) -> None:
        """Every valid header of ``chunk`` (at ``start`` in the file) extends the longest chains of frames."""
        carry = self._carry
        buf = carry + chunk
        base = start - len(carry)
        end = len(buf) - 3  # a header needs its 4 bytes
        table, pending, best = MPA, self._pending, self._best
        pop, push = heapq.heappop, heapq.heappush
        found = 0
        # (only the headers MPA takes reach the loop: 0xFF bytes alone cost no Python step, and the headers
        # found are capped below)
        for m in MPA_HEADER.finditer(buf):
            p = m.start()
            if p >= end:
                break
            e = table[buf[p + 1] << 8 | buf[p + 2]]
            if e is None:  # (never: MPA_HEADER takes what the table takes)
                continue
            at = base + p
            while pending and pending[0][0] <= at:  # frames ended before this one: chains it may extend
                _, v, r = pop(pending)
                if v > best.get(r, 0):
                    best[r] = v
            rate = e[2]
            prior = best.get(rate, 0)
            for r, v in best.items():  # a chain of another rate: this frame switches it
                if r != rate and v + _SWITCH_TICKS > prior:
                    prior = v + _SWITCH_TICKS
            push(pending, (at + e[0], prior + e[1], rate))
            found += 1
            if self._candidates + found > (self.size >> 4) + 4096:
                break  # (voided below)
        self._best = best
        self._carry = buf[max(0, end) :]
        self._candidates += found
        # Headers every few bytes are no audio anyone encoded: stop before it costs more than it is worth.
        if self._candidates > (self.size >> 4) + 4096:
            self._void()


def duration(data: bytes | bytearray | memoryview, filename: str | None = None) -> Fraction | None:
    """The audio length of a file held whole (:class:`Meter`)."""
    m = Meter(filename)
    m.feed(data)
    return m.result()


def _named(kind: str, filename: str | None) -> bool:
    """The file's name agrees with what its bytes are: a provider that picks the demuxer by the extension
    reads what keyplane measured (MPEG audio named .wav, or a WAV named .mp3, could be read otherwise)."""
    if filename is None:
        return True
    ext = filename.rpartition(".")[2].lower() if "." in filename else ""
    return ext in _EXTENSIONS[kind]


def ceil_seconds(length: Fraction) -> int:
    return -(-length.numerator // length.denominator)
