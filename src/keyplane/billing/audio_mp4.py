"""MP4/M4A (ISO BMFF) with AAC audio: an upper bound of what ffmpeg decodes from it (billing/audio_length.py).

What ffmpeg 5.1 does with such a file, and what keyplane counts:

- Its ``mov`` demuxer claims a file whose first box is ``ftyp`` at the first probe (score 100 in 2 KiB; none
  of the other probes reaches that there), unless a ``hdlr`` ... ``mhlr`` ``MPEG`` pattern follows (an MPEG-PS
  in MOV: refused). It reads the sample table (``stsz``, ``stsc``, ``stco``) into packets: one per sample, at
  its chunk's offset plus the sizes before it, of its ``stsz`` size. The durations the file declares (``mvhd``,
  ``mdhd``, ``tkhd``, ``stts``) are timestamps only, and are not read here.
- The AAC decoder decodes each packet as a raw data block and, when non-zero bytes follow the block, decodes
  the rest again (billing/audio_aac.py): so a packet plays as many frames as blocks are chained in it. Each
  frame is 1024 samples at the AudioSpecificConfig's sample rate (HE-AAC: twice the samples at twice the rate).
- What is counted: the ``mdat`` box is read as it arrives, as a chain of blocks from its first byte, each ending
  where ffmpeg's decoder stops reading it (audio_aac.block); the file is measured only when its packets are
  exactly the first blocks of that chain, in order (each sample's offset where the one before ended, its size
  the bytes its block takes): then every packet is one block, one frame, and the bound is the packets times
  1024 over the rate, plus 100 ms (an implicit HE-AAC switch on the first frame restarts a resampler). Until
  ``moov`` says the sample rate (it may follow ``mdat``), the chain is read for every class of band tables a
  rate may have, split where they read a block differently (audio_aac.compatible).

Refused (None), so that nothing ffmpeg reads goes uncounted: a first box other than ``ftyp`` of a common
brand; a box where it is not expected (``_TOP``, ``_KIDS``: ``moof``/``mvex`` fragments, ``cmov``, ``uuid``, a
second ``trak``, ``ctts``, ``stz2``...); ``moov`` or ``mdat`` twice or missing; a size of 0 or 64 bits but on
``mdat``; ``free`` hiding an ``mvhd`` (ffmpeg may read it as ``moov``); a ``wide`` box with content (ffmpeg
reads an ``mdat`` in it); a track that is not sound; a sample entry but one version-0 ``mp4a`` whose ``esds``
names MPEG-4 audio (0x40) and holds an AudioSpecificConfig of AAC-LC (HE-AAC and HE-AACv2 over it included)
in one or two channels, without 960-sample frames, a core coder or an extension flag, at a rate index of 0 to
12; an edit list of more than one entry (ffmpeg plays the media once per entry), or of one starting before the
media or at another rate; a single ``stts`` delta of 1 (ffmpeg then cuts chunks into packets of its own), or a
delta running ahead of 1024 samples at the rate; ``stsc`` entries out of order or of another sample
description; a data reference that is not the file itself; metadata (``udta``, ``meta``, ``ilst``) holding a
box ffmpeg parses as more than metadata (a ``trak``, an ``m1a`` handler); a packet that is not the next block
of the chain, a block of the other channel element, a block over 8 KiB; a ``moov`` over 8 MiB, an ``mdat``
over 32 MiB, or over one block per 32 bytes beyond the first 16,384. Reading the blocks costs 0.3 to 0.6 s
of CPU a MB of AAC (pure Python, a byte at a time: see audio_aac); the caps keep it to the files whisper takes.
"""

from __future__ import annotations

import itertools
import re
import sys
from array import array
from collections.abc import Iterator
from fractions import Fraction
from typing import Final, NamedTuple

from keyplane.billing import audio_aac

_BRANDS: Final = frozenset(
    {b"M4A ", b"M4B ", b"mp42", b"mp41", b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"3gp4", b"3gp5", b"3gp6"}
)
_TOP: Final = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide"})
# Children allowed in each box read here: (at most once, any number of times); the rest are refused.
_KIDS: Final = {
    b"moov": ({b"mvhd", b"trak", b"udta", b"meta", b"iods"}, {b"free", b"skip"}),
    b"trak": ({b"tkhd", b"edts", b"mdia", b"udta", b"meta"}, {b"free", b"skip"}),
    b"edts": ({b"elst"}, set()),
    b"mdia": ({b"mdhd", b"hdlr", b"minf"}, set()),
    b"minf": ({b"smhd", b"dinf", b"stbl"}, set()),
    b"dinf": ({b"dref"}, set()),
    b"stbl": ({b"stsd", b"stts", b"stsc", b"stsz", b"stco", b"co64", b"stss"}, {b"sgpd", b"sbgp"}),
    b"mp4a": ({b"esds", b"btrt", b"chan"}, set()),
}
# Boxes ffmpeg's mov demuxer parses by type wherever it meets them (mov_default_parse_table, 5.1): within
# metadata, any of these but the harmless ones is refused (a `trak` in `udta` would be a track).
_PARSED: Final = frozenset(
    b"ACLR APRG AALP ARES avss av1C chpl co64 colr ctts dinf DpxE dref edts elst enda fiel adrm ftyp glbl hdlr "
    b"ilst jp2h mdat mdhd mdia meta minf moof moov mvex mvhd alac avcC pasp sidx stbl stco stps strf stsc stsd "
    b"stss stsz stts stz2 sdtp tkhd tfdt tfhd trak traf tref tmcd chap trex trun udta wave esds dac3 dec3 ddts "
    b"wide wfex cmov chan dvc1 sgpd sbgp hvcC uuid free ---- sinf frma senc saiz saio pssh schm schi tenc dfLa "
    b"st3d sv3d dOps dmlp SmDm CoLL vpcC mdcv clli dvcC dvvC dvwC kind SA3D SAND iloc pcmC pitm".split()
) | {b"SMI ", b"Cin\x8e"}
_META_SAFE: Final = {b"udta": {b"meta", b"free", b"chpl"}, b"meta": {b"hdlr", b"ilst", b"free"}, b"ilst": {b"----"}}
_MPEG_PS: Final = re.compile(rb"hdlr.{4}mhlrMPEG", re.DOTALL)  # mov_probe's MOV-packed MPEG-PS (score 5)
_RATES: Final = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
_FRAME: Final = 1024
_MARGIN: Final = Fraction(1, 10)  # seconds: one resampler restart (cf. audio_length._SWITCH_TICKS)
_MAX_BLOCK: Final = 8192  # bytes: the longest block read (the format allows 6144 bits a channel)
_MAX_MOOV: Final = 8 << 20
_MAX_MDAT: Final = 32 << 20
_BATCH: Final = 64 << 10  # mdat bytes read at once (besides a block's look-ahead)


def foreign(head: bytes) -> bool:
    """The first bytes ffmpeg probes make its mov probe score low (another demuxer would be tried)."""
    return _MPEG_PS.search(head) is not None


class _Chain:
    """Blocks read from the start of ``mdat`` with the band tables of ``classes`` (they all read them alike)."""

    __slots__ = ("alive", "at", "blocks", "classes")

    def __init__(self, classes: list[int], at: int, blocks: array[int]) -> None:
        self.classes, self.at, self.blocks, self.alive = classes, at, blocks, True  # at: a file offset


class _Track(NamedTuple):
    rate: int
    cls: int
    element: int  # 0: SCE (mono), 1: CPE (stereo)
    fixed: int  # every sample's size (0: per sample, in sizes)
    sizes: array[int]
    samples: int
    runs: array[int]  # stsc: first chunk, samples per chunk, sample description; ...
    offsets: array[int]  # stco or co64


class Mp4:
    """An MP4 file fed in order (``feed``, then ``result``): at most 8 MiB of ``moov`` and a block's worth
    (plus a batch) of ``mdat`` are held."""

    def __init__(self) -> None:
        self.size = 0
        self.bad = False
        self._head = bytearray()  # the current box's header
        self._type = b""  # the current top-level box ("": between boxes)
        self._end = -1  # where it ends (-1: at the end of the file)
        self._keep = bytearray()  # ftyp and moov contents, a free box's first bytes
        self._seen: set[bytes] = set()
        self._track: _Track | None = None
        self._mdat = -1  # where mdat's content starts
        self._chains: list[_Chain] = []
        self._buf = bytearray()  # mdat content from self._base
        self._base = 0
        self._read = 0  # blocks read, all chains

    def feed(self, chunk: bytes) -> None:
        i, n = 0, len(chunk)
        while i < n and not self.bad:
            if not self._type:
                take = min(n - i, (16 if self._head[:4] == b"\0\0\0\1" else 8) - len(self._head))
                self._head += chunk[i : i + take]
                i, self.size = i + take, self.size + take
                if len(self._head) >= 8 and (self._head[:4] != b"\0\0\0\1" or len(self._head) == 16):
                    self._open()
                continue
            take = n - i if self._end < 0 else min(n - i, self._end - self.size)
            self._content(chunk[i : i + take])
            i, self.size = i + take, self.size + take
            if self.size == self._end:
                self._close()

    def result(self) -> Fraction | None:
        if self._type == b"mdat":  # it runs to the end of the file (or past it: ffmpeg reads what there is)
            self._close()
        t = self._track
        if self.bad or self._type or len(self._head) >= 8 or t is None or self._mdat < 0:
            return None  # (ffmpeg ignores fewer than 8 bytes after the last box)
        chain = next(c for c in self._chains if t.cls in c.classes)
        blocks, expected, k = chain.blocks, self._mdat, 0
        for offset, samples in _chunks(t):  # as mov_build_index lays the packets out
            if offset != expected:
                return None
            for _ in range(min(samples, t.samples - k)):
                size = t.fixed or t.sizes[k]
                if k >= len(blocks) or blocks[k] != size << 1 | t.element:
                    return None
                expected, k = expected + size, k + 1
            if k == t.samples:
                break
        return Fraction(k * _FRAME, t.rate) + _MARGIN if k else None

    # --- boxes -----------------------------------------------------------------------------------

    def _open(self) -> None:
        h = bytes(self._head)
        field, kind = int.from_bytes(h[:4], "big"), h[4:8]
        size = int.from_bytes(h[8:16], "big") if field == 1 else field
        start = self.size - len(h)
        self._head.clear()
        first = not self._seen
        if kind not in _TOP or first != (kind == b"ftyp") or (kind in self._seen and kind in (b"moov", b"mdat")):
            self.bad = True
            return
        if (field in (0, 1) and kind != b"mdat") or (field and size < len(h)):  # 0: to the end; 1: 64 bits
            self.bad = True
            return
        self._seen.add(kind)
        self._type, self._end = kind, (start + size if field else -1)
        self._keep.clear()
        if kind == b"mdat":
            self._mdat = self._base = self.size
            if self._end - self._mdat > _MAX_MDAT:
                self.bad = True
            classes = [self._track.cls] if self._track else list(range(audio_aac.CLASSES))
            self._chains = [_Chain(classes, self.size, array("H"))]
        if self.size == self._end:
            self._close()

    def _content(self, data: bytes) -> None:
        kind = self._type
        if kind == b"mdat":
            self._buf += data
            if self.size + len(data) - self._mdat > _MAX_MDAT:
                self.bad = True
            elif len(self._buf) >= _MAX_BLOCK + _BATCH:
                self._blocks(final=False)
        elif kind in (b"ftyp", b"moov") or len(self._keep) < 8:
            self._keep += data
            if len(self._keep) > _MAX_MOOV:
                self.bad = True

    def _close(self) -> None:
        kind, keep = self._type, bytes(self._keep)
        self._type, self._keep = b"", bytearray()
        if kind == b"ftyp":
            self.bad |= keep[:4] not in _BRANDS
        elif kind == b"moov":
            try:
                self._track = _track(keep)
            except IndexError:  # a box too short for its fields
                self._track = None
            self.bad |= self._track is None
        elif kind == b"mdat":
            self._blocks(final=True)
        elif kind == b"wide":
            self.bad |= len(keep) >= 8
        else:  # free, skip: ffmpeg may take one holding an mvhd for a moov
            self.bad |= keep[4:8] in (b"mvhd", b"cmov")

    # --- the chain of blocks in mdat ------------------------------------------------------------

    def _blocks(self, final: bool) -> None:
        """Read the blocks the buffer holds whole (all of them at the end of mdat) on every live chain."""
        buf, base = self._buf, self._base
        top = base + len(buf)
        data = bytes(buf) + bytes(4)  # (audio_aac.block reads 4 bytes ahead)
        chains = self._chains
        for chain in chains:  # (the list grows as chains split)
            while chain.alive and (final or chain.at + _MAX_BLOCK <= top) and chain.at < top:
                self._read += 1
                if self._read > (top - self._mdat) // 32 + 16384:  # (top: the mdat bytes received)
                    self.bad = True
                    return
                at = 8 * (chain.at - base)
                got = audio_aac.block(data, at, min(8 * len(buf), at + 8 * _MAX_BLOCK), chain.classes[0])
                if got is None:
                    chain.alive = False
                    if len(chain.classes) > 1:  # the others read it with their own tables
                        chains.append(_Chain(chain.classes[1:], chain.at, array("H", chain.blocks)))
                        chain.classes = chain.classes[:1]
                    break
                end, element, long_sfb, short_sfb = got
                rep = chain.classes[0]
                same = [c for c in chain.classes if c == rep or audio_aac.compatible(rep, c, long_sfb, short_sfb)]
                if len(same) < len(chain.classes):
                    rest = [c for c in chain.classes if c not in same]
                    chains.append(_Chain(rest, chain.at, array("H", chain.blocks)))
                    chain.classes = same
                size = (end + 7) // 8 - (chain.at - base)
                chain.blocks.append(size << 1 | element)
                chain.at += size
        low = min((c.at for c in chains if c.alive), default=top)
        del self._buf[: max(0, low - base)]
        self._base = max(base, min(low, top))


def _track(moov: bytes) -> _Track | None:
    """The one AAC track of ``moov`` as ffmpeg reads it, or None when it is not one keyplane bounds."""
    kids = _kids(moov, 0, len(moov), b"moov")
    if kids is None or b"trak" not in kids or b"mvhd" not in kids:
        return None
    if not all(_metadata(moov, *kids[k], k) for k in (b"udta", b"meta") if k in kids):
        return None
    trak = _kids(moov, *kids[b"trak"], b"trak")
    if trak is None or b"mdia" not in trak:
        return None
    if not all(_metadata(moov, *trak[k], k) for k in (b"udta", b"meta") if k in trak):
        return None
    mdia = _kids(moov, *trak[b"mdia"], b"mdia")
    if mdia is None or len(mdia) != 3:
        return None
    minf = _kids(moov, *mdia[b"minf"], b"minf")
    if minf is None or len(minf) != 3 or moov[mdia[b"hdlr"][0] + 8 : mdia[b"hdlr"][0] + 12] != b"soun":
        return None
    dinf, stbl = _kids(moov, *minf[b"dinf"], b"dinf"), _kids(moov, *minf[b"stbl"], b"stbl")
    if not dinf or not stbl or b"dref" not in dinf or not _self_contained(moov, *dinf[b"dref"]):
        return None
    if not {b"stsd", b"stts", b"stsc", b"stsz"} <= set(stbl):
        return None
    if (b"stco" in stbl) == (b"co64" in stbl) or (b"edts" in trak and not _plain_edit(moov, trak[b"edts"])):
        return None
    s = mdia[b"mdhd"][0]
    timescale = int.from_bytes(moov[s + 12 : s + 16] if moov[s] == 0 else moov[s + 20 : s + 24], "big")
    config = _sample_entry(moov, *stbl[b"stsd"])
    if config is None or timescale < 1:
        return None
    index, element = config
    rate = _RATES[index]
    table = _table(moov, stbl)
    if table is None or not _times(moov, *stbl[b"stts"], rate, timescale):
        return None
    return _Track(rate, audio_aac.CLASS[index], element, *table)


def _kids(data: bytes, start: int, end: int, parent: bytes) -> dict[bytes, tuple[int, int]] | None:
    """The children of a box read here, by type (content start, end): None on a malformed, unknown or
    repeated one (ffmpeg ignores fewer than 8 bytes left over)."""
    once, many = _KIDS[parent]
    out: dict[bytes, tuple[int, int]] = {}
    boxes = _boxes(data, start, end)
    if boxes is None:
        return None
    for kind, s, e in boxes:
        if kind in once and kind not in out:
            out[kind] = (s, e)
        elif kind not in many:
            return None
    return out


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]] | None:
    out = []
    while end - start >= 8:
        size = int.from_bytes(data[start : start + 4], "big")
        if size < 8 or start + size > end:
            return None
        out.append((data[start + 4 : start + 8], start + 8, start + size))
        start += size
    return out


def _metadata(data: bytes, start: int, end: int, kind: bytes) -> bool:
    """``udta``, ``meta`` and ``ilst`` hold nothing ffmpeg would parse as more than metadata."""
    if kind == b"meta":  # mov_read_meta looks for `hdlr` 4 bytes at a time and reads the boxes from its own
        at = next((p for p in range(start, end - 8, 4) if data[p : p + 4] == b"hdlr"), -1)
        if at < 0:
            return True  # ffmpeg skips it
        if at - 4 < start:
            return False
        start = at - 4
    kids = _boxes(data, start, end)
    if kids is None:
        return False
    for k, s, e in kids:
        if k in _PARSED and k not in _META_SAFE[kind]:
            return False
        if k == b"hdlr" and data[s + 8 : s + 12] not in (b"mdir", b"mdta"):  # in a track: `m1a ` makes it MP2
            return False
        if k in (b"meta", b"ilst") and not _metadata(data, s, e, k):
            return False
    return True


def _self_contained(data: bytes, start: int, end: int) -> bool:
    entries = _boxes(data, start + 8, end)
    return (
        int.from_bytes(data[start + 4 : start + 8], "big") == 1
        and entries is not None
        and len(entries) == 1
        and entries[0][0] in (b"url ", b"alis")
        and data[entries[0][1] + 3] & 1 == 1
    )


def _plain_edit(data: bytes, edts: tuple[int, int]) -> bool:
    """One edit, of the media from a time at or after its start, at rate 1: each sample is played once."""
    kids = _kids(data, *edts, b"edts")
    if not kids or b"elst" not in kids:
        return False
    s, e = kids[b"elst"]
    wide = 8 if data[s] == 1 else 4
    if int.from_bytes(data[s + 4 : s + 8], "big") != 1 or e - s != 8 + 2 * wide + 4:
        return False
    media_time = int.from_bytes(data[s + 8 + wide : s + 8 + 2 * wide], "big", signed=True)
    return media_time >= 0 and data[s + 8 + 2 * wide : s + 12 + 2 * wide] == b"\0\1\0\0"


def _sample_entry(data: bytes, start: int, end: int) -> tuple[int, int] | None:
    """(sampling index, channel element) of the one ``mp4a`` entry, from its ``esds`` AudioSpecificConfig."""
    entries = _boxes(data, start + 8, end)
    if int.from_bytes(data[start + 4 : start + 8], "big") != 1 or not entries or len(entries) != 1:
        return None
    kind, s, e = entries[0]
    if kind != b"mp4a" or e - s < 28 or data[s + 6 : s + 10] != b"\0\1\0\0":  # data reference 1, version 0
        return None
    kids = _kids(data, s + 28, e, b"mp4a")
    if not kids or b"esds" not in kids:
        return None
    s, e = kids[b"esds"]
    asc = _esds(data[s + 4 : e])
    return _config(asc) if asc else None


def _esds(d: bytes) -> bytes | None:
    """The AudioSpecificConfig of an ES descriptor read as ffmpeg does (ff_mov_read_esds), for object type
    0x40 (MPEG-4 audio)."""
    p, tag, _ = _descriptor(d, 0)
    if tag != 3 or p + 3 > len(d):
        return None
    flags = d[p + 2]
    p += 5 if flags & 0x80 else 3  # ES_ID, flags, a stream it depends on
    if flags & 0x40 and p < len(d):  # a URL
        p += 1 + d[p]
    p += 2 if flags & 0x20 else 0  # an OCR stream
    p, tag, _ = _descriptor(d, p)
    if tag != 4 or p + 13 > len(d) or d[p] != 0x40:
        return None
    p, tag, n = _descriptor(d, p + 13)
    return d[p : p + n] if tag == 5 and 0 < n <= len(d) - p else None


def _descriptor(d: bytes, p: int) -> tuple[int, int, int]:
    """(content position, tag, length) of the descriptor at ``p`` (ff_mp4_read_descr: up to 4 length bytes)."""
    if p >= len(d):
        return p, -1, 0
    tag, p, n = d[p], p + 1, 0
    for _ in range(4):
        if p >= len(d):
            return p, -1, 0
        c, p = d[p], p + 1
        n = n << 7 | c & 0x7F
        if not c & 0x80:
            break
    return p, tag, n


def _config(asc: bytes) -> tuple[int, int] | None:
    """(sampling index, channel element) of an AudioSpecificConfig ffmpeg decodes as AAC-LC frames of 1024
    samples, one SCE or CPE each (ff_mpeg4audio_get_config_gb, decode_ga_specific_config)."""
    bits = format(int.from_bytes(asc, "big"), f"0{8 * len(asc)}b") + "0" * 64
    aot, p = int(bits[0:5], 2), 5
    if aot == 31:
        aot, p = 32 + int(bits[5:11], 2), 11
    index, channels = int(bits[p : p + 4], 2), int(bits[p + 4 : p + 8], 2)
    p += 8
    # HE-AAC (5), HE-AACv2 (29; an old MP3-on-MP4 draft has bits ffmpeg tells apart): the extension rate (which
    # doubles the samples and the rate alike), then the core's object type.
    if aot == 5 or (aot == 29 and not (int(bits[p : p + 3], 2) & 3 and not int(bits[p : p + 9], 2) & 0x3F)):
        p += 4 + (24 if bits[p : p + 4] == "1111" else 0)
        aot, p = int(bits[p : p + 5], 2), p + 5
        if aot == 31:
            return None
    # frameLengthFlag (960 samples), dependsOnCoreCoder, extensionFlag: none
    if aot != 2 or index > 12 or channels not in (1, 2) or bits[p : p + 3] != "000" or 8 * len(asc) < p + 3:
        return None
    return index, channels - 1


def _table(
    data: bytes, stbl: dict[bytes, tuple[int, int]]
) -> tuple[int, array[int], int, array[int], array[int]] | None:
    """stsz (its fixed size, the sizes, the count), stsc and the chunk offsets, when ffmpeg reads them as they are
    (it mends stsc entries out of order: refused)."""
    s, e = stbl[b"stsz"]
    fixed, count = int.from_bytes(data[s + 4 : s + 8], "big"), int.from_bytes(data[s + 8 : s + 12], "big")
    sizes = _words(data[s + 12 : e], 4)
    if not count or (not fixed and len(sizes) != count) or (fixed and e - s != 12):
        return None
    s, e = stbl[b"stsc"]
    runs = _words(data[s + 8 : e], 4)
    n = len(runs) // 3
    if not n or e - s != 8 + 12 * n or int.from_bytes(data[s + 4 : s + 8], "big") != n or runs[0] != 1:
        return None
    firsts = runs[0::3]
    if any(a >= b for a, b in itertools.pairwise(firsts)) or 0 in runs[1::3] or any(x != 1 for x in runs[2::3]):
        return None
    wide = b"co64" in stbl
    s, e = stbl[b"co64" if wide else b"stco"]
    offsets = _words(data[s + 8 : e], 8 if wide else 4)
    if e - s != 8 + (8 if wide else 4) * len(offsets) or int.from_bytes(data[s + 4 : s + 8], "big") != len(offsets):
        return None
    return fixed, sizes, count, runs, offsets


def _words(b: bytes, width: int) -> array[int]:
    """Big-endian unsigned words (a trailing part ignored)."""
    out = array("Q" if width == 8 else "I", b[: len(b) - len(b) % width])
    if out.itemsize != width:
        raise ValueError("no machine word of that width")
    if sys.byteorder == "little":
        out.byteswap()
    return out


def _chunks(t: _Track) -> Iterator[tuple[int, int]]:
    """(offset, samples) of each chunk, the samples by the last stsc entry whose first chunk it reached."""
    runs, j = t.runs, 0
    for i, offset in enumerate(t.offsets):
        while 3 * j + 3 < len(runs) and runs[3 * j + 3] == i + 1:
            j += 1
        yield offset, runs[3 * j + 1]


def _times(data: bytes, start: int, end: int, rate: int, timescale: int) -> bool:
    """The timestamps never run ahead of the audio (a player that fills gaps would add silence), and are not
    the single delta of 1 that makes ffmpeg read chunks as raw audio."""
    n = int.from_bytes(data[start + 4 : start + 8], "big")
    if end - start != 8 + 8 * n or not n:
        return False
    deltas = [int.from_bytes(data[p + 4 : p + 8], "big") for p in range(start + 8, end, 8)]
    return not (n == 1 and deltas[0] == 1) and all(d >= 1 and d * rate <= _FRAME * timescale for d in deltas)
