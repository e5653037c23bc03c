"""AAC raw data blocks as ffmpeg's decoder reads them: where one ends (billing/audio_mp4.py, issue 17).

ffmpeg's AAC decoder decodes one raw_data_block of a packet and, when non-zero bytes follow the block's end, is
handed the rest of the packet again (libavcodec/decode.c, "Multiple frames in a packet"): a packet holding N
blocks plays N frames, whatever the container's sample table says (an m4a whose table lists one 40 kB sample
decodes to 23 minutes in ffmpeg 5.1: 10,000 four-byte blocks at 7,350 Hz). A block has no length field: where
it ends is known only by reading it as the decoder does, its Huffman-coded scale factors and spectral data
included. :func:`block` does that for AAC-LC (the core of HE-AAC too), bit for bit as ffmpeg 5.1's
aacdec_template.c (decode_ics_info, decode_band_types, decode_scalefactors, decode_pulses, decode_tns,
decode_spectrum_and_dequant, decode_cpe, skip_data_stream_element, decode_extension_payload and
decode_dynamic_range, with their quirks: an SBR payload before the channel element consumes four bits but
counts its whole length; a DRC payload counts the bytes it says, not the bits it read). A block must hold one
channel element, an SCE or a CPE, amid fill (FIL) and data stream (DSE) elements, then END. Anything else is
refused (None): coupling, LFE and program config elements, a second channel element, prediction, gain control
(an error in 5.1, decoded by later versions), what ffmpeg refuses, a block running past the bits given.

The Huffman-coded parts are skipped a byte at a time by an automaton per codebook (its states: a place in the
codebook's tree, in a codeword's sign and escape bits, or in the first byte's bits before the run), each state's
row of 256 transitions built when first reached: 0.3 to 0.6 s of CPU a MB of AAC. The codebooks are the 11
spectral and the scale factor Huffman codebooks of ISO/IEC 14496-3 (Tables 4.A.1 to 4.A.12), packed below in
index order as (5-bit length, code), zlib and base85.
"""

from __future__ import annotations

import base64
import zlib
from functools import cache
from typing import Final

# The codebooks 1 to 11, then the scale factor codebook: (5-bit length, code) for each index, in order.
_PACKED: Final = (
    "c-j?J4Ny~87T#%Tx6-;TB2`&|D#Zxtl&v6+Ajwq00Jg*y=_{?0`Ujehb%kO9N#4|IF`=S>(L#%F6(K;DJmp6PfhQFzh#HcBfE7UuVEB=cA41"
    ";W*|#&_oS8fKoO{l9?mgd?EQmW$hos8Rw@94gYiOTD;o{qco7<V9DM5$48x$6NK|PWaNCmriy~I3LU{^nuk2N~g_j43hY@;+M`fT(i>-oEnv"
    "Di6vr)+=mg8EPSA{P$4hr~FRW#K&`MzAGdAVMa^|6#VhY7_TRDhj7~w+SoW=_+zaKs<!%g(0(Ihfm6BpIEBwlJH8Fx6u;%+D96}^X>WPSaGr"
    "68xtW1=EOau(IMJhEx7Y#qIdd4NQ@)&<i}XhR`>Mq#NXV0D86F~>DXN*D#k^}(cDq2Fmkc`#)6l!MYR7-y<gz9Ro?rKmLyDyr|BYAP_*;RKF"
    "~D?zfr864Y;t@BCZkamq(RJv8?(qGsh7NCqgOJ{0)em=a~pAVZonamY5Ch%;{^SW)69TU&CJP^s9wSjlyV|*`<C#Ok<l{D`3tycA<{#BXL(9"
    "cs#*}0E#RU2MUj1W|-LmjBgO_1EaDysucbb4q|qIJoXd#5(U0p;zZ#(dP_J4?5VNZ$h_m5BaE}65@<{Nx~#t8y)uRG-$(E^fhiMb{2Ny)=?j"
    "d?iL(XUqOz96oEj5d4)-EGPQ^^DI{S9b%2WeZ60X0G4^U^SxB?Xme3z&?Vi~LNl}$4JY$8{k-XN=H-@ZzEI*=z=AzX$g;$76*+Dju00xA+`H"
    "^4MxKs0+&&S$#e1Na#n7)gxcmjov=c>{PO+J)J5cH}8m82)yf50_$6Vv|gXYkZ>h?=_0jWK&Ev?O~GdyQ&b4o>|YTSUXklbmx+7^%-gdF+fb"
    "?HNw!NTyVl1@|bw3o0nJ+118;+Fo_Hh7M<%btbku2ku8@?IjTu;2&`Zwdg+8Iv0iY6_F{us&AeFUBN~wNdd|4HRFrx=-?s1IgO4l1)=r6s1V"
    "7ELZ$G|jc`x>rtjmcN)U0~vjg)5ENQ!@_PA9EA9=$&IF}4R?`!ekHvwhwPDf#WRisp6Z8z+UYnuSrB8d3s?6|0q1(L4iIO*Fvm+)o=x|1Lp;"
    "Ov64uaYrg&JI&GTB7fU^KprzGQpy5d8iz2%BKm5R=bX4rvWK{mRn{OlLG?MgCu8NNM;c+A6n9BVh?Ag#4q4Yc?**=xG{GIA1EaZ)v`Gqy{ZI"
    "~%(C0#0yZZd=w<-N7W*|nFx4l!lKDSq1xxnv?+SAkT7whux?LQw-TpcDF$ZwbVDKzUV+9`3HZ!BHbOfD{VU}+HrR(wwQlb!2wS(|Sc#UpWt?"
    "*Y50Np5D;3pl;X_+9?@PSpf|P|_)RkZKBXe$8%$tN;G>khseyW=5<?R<^9qd6RmJo|ji$56d0RKXH`z2OgO`+0wwgE{_m?hIQuewTR-5Rn2J"
    "($W7u`;vCVe8%T9*pbpNK)kL<tRFj&gl5WY6<Vosy-9j-v1MV$u3!WzAzl4&wOkCF)BqOQQb>v@c7?h(Pg2e2pg>Kgr^$C4lZWNxz48yh!>>"
    "+4kOIl9m@X0*t113yvLz{-DZ_uAY0y;WO1)KT3NIj8HXo+^+!_=7@)M7{{EQc8%DCDv^XcdzpPY`~L-P4U9<`Oy4@mX$9Bm5EFh$dpc==7<U"
    "8}wq>f{x76yWkEnkHVkmW|k5LU|QXi!_I#)^Uy#zet-{Q20#KXVj^`s#8FJmur{=Q*m{GF2lFs>3+|#M!1$@kkcwZO`ihI$Ew5!yQV6|_DTe"
    "Zme>=XT<ken*o3!jmWOP=w^MdRCvo|XEZ_QOk)~A&1-(+%nO>5>t%ae9|QL?39ur$R#V^h0RW!6kY8aJmtSfP$AGHv~1gVDfU%VewRz{RSn$"
    "h`xC_f!3UTp2sVwct<U(Z$$VU;Rrz?{x+B7sIn+E&RWb9%2CV4lOu;+U?u2L!0(F5(bcS_(8M^?GP-L`bT<qJ{7rVFPh@(k!rjPZA51zaamO"
    "+-ua8lZ1b!}hup?n&|>r%X2)wHd+o+S@uB3x=8j`Z@&d=KpG^Wj8)qvrA?NYk$+fKkIU43oHjmY?)6f9rGNrT6qA?-&@iw#^ZNV%$HkA#5&e"
    "uLFj_8f|UlE>>=5A5V;<jK{9otW>fKOoTNJpSs<+|MOGGhv(v(o|%YN<9W`IV-CEDhPIT{pJz^OS#>EFLSBp*wl&O7~<2O(%BqTaj}LWAnO-"
    "FCX{}j;@YgTG<+(6mEK%*rO>x;_$>Jr%EFB-i#<~i`uhB|III<6GfW%xt-)qM@EoMzb4Pt8ezM$X@_`q>9W9kyr@z`rqrx5YHlHw3i}HW-&4"
    "IYt9LK$yuNjHy18F1*Y4j%-ipo&a_P61)&}Wglvk4c7cH;4&x<Mj<7UVA$~mv+{2`=A*_UDNTJ2b-xXb(Scf<Dw2Q;UVe`$x3OIo~+eM?o=B"
    "h968=?5S3HkW>$Q8lQ^L-uK(C8xD|<-AF5qbqMnp2yFGpD-6)jqi%cNSBVQhWHKK%xLifbT?YHY#ZbL!m}k_zw`4<rAgJtzlvnyyU@?jBj_P"
    "C5p7$}2dULduTdf4+H1SgniG$?FQ{z6)?gcM3AW>u`aQy={WQX4@w&&qfP957PIhkzV9FU4<6s*g8m^2Xtk+Y`@5mS0OS?*Lsj}S{`Zy^Go("
    "-PIIo-fn-WnZ)+|&*xhc|a*N#_%1g3Y)EcLqCg5~o5q-8Mf|pUB&>{c_Th7pkaxYdxZr?K>`aynEo*)>n><y-%<Tls15C46HgJb+Dj=c^yz<"
    "aB|?5VqiJw062(&(g7_7hO^yZ!hpO0cl{s-W#0kE8EEojw}UMgt_W!f3<5I*-Q1|MFX6#36#;8th;XFRb<809{|_u0PNG3fAE~xrO@ac;nZ2"
    "$JTSuA#^4;RrEK4yBVQq~6kY6ChvvQhT%Sm)17qK6Xq8i~d!hV?f4RTS-EVBwmfISPGOeCRn0&sjO&ZYxZ1XLYRMxZ=_OaL++$RZ%?fHVTjI"
    "oN=<0pkfw2rvo2qyudP+7svy;0~d=Wf9PvGv`wTEQfFY2jPn7F8"
)
_SIZES: Final = (81, 81, 81, 81, 81, 81, 64, 64, 169, 169, 289, 121)
# A book's values per index: (dimension, values per dimension, signed); unsigned values take a sign bit each
# when not zero, and 16 in book 11 is an escape (ffmpeg's decode_spectrum_and_dequant).
_VALUES: Final = (
    ((4, 3, True),) * 2 + ((4, 3, False),) * 2 + ((2, 9, True),) * 2 + ((2, 8, False),) * 2 + ((2, 13, False),) * 2
) + ((2, 17, False),)
_SF: Final = 11  # the scale factor codebook's place
_NOISE_BITS: Final = 9  # the first PNS band's energy is sent raw (NOISE_PRE_BITS)
_ESCAPE_ONES: Final = 8  # an escape is n ones (at most 8), a zero, n + 4 bits

# Scalefactor band offsets (ISO/IEC 14496-3 Tables 4.129-4.147) of long and short windows; the sampling index
# (0: 96 kHz ... 12: 7.35 kHz) picks a class, which is all a block's reading depends on.
_LONG: Final[tuple[tuple[int, ...], ...]] = (
    (0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 64, 72, 80, 88, 96, 108, 120, 132, 144, 156, 172, 188,
     212, 240, 276, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024),
    (0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 64, 72, 80, 88, 100, 112, 124, 140, 156, 172, 192, 216,
     240, 268, 304, 344, 384, 424, 464, 504, 544, 584, 624, 664, 704, 744, 784, 824, 864, 904, 944, 984, 1024),
    (0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 48, 56, 64, 72, 80, 88, 96, 108, 120, 132, 144, 160, 176, 196, 216,
     240, 264, 292, 320, 352, 384, 416, 448, 480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800, 832, 864, 896,
     928, 1024),
    (0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 48, 56, 64, 72, 80, 88, 96, 108, 120, 132, 144, 160, 176, 196, 216,
     240, 264, 292, 320, 352, 384, 416, 448, 480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800, 832, 864, 896,
     928, 960, 992, 1024),
    (0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 52, 60, 68, 76, 84, 92, 100, 108, 116, 124, 136, 148, 160, 172,
     188, 204, 220, 240, 260, 284, 308, 336, 364, 396, 432, 468, 508, 552, 600, 652, 704, 768, 832, 896, 960, 1024),
    (0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 100, 112, 124, 136, 148, 160, 172, 184, 196, 212, 228, 244, 260,
     280, 300, 320, 344, 368, 396, 424, 456, 492, 532, 572, 616, 664, 716, 772, 832, 896, 960, 1024),
    (0, 12, 24, 36, 48, 60, 72, 84, 96, 108, 120, 132, 144, 156, 172, 188, 204, 220, 236, 252, 268, 288, 308, 328,
     348, 372, 396, 420, 448, 476, 508, 544, 580, 620, 664, 712, 764, 820, 880, 944, 1024),
)  # fmt: skip
_SHORT_96: Final = (0, 4, 8, 12, 16, 20, 24, 32, 40, 48, 64, 92, 128)
_SHORT_48: Final = (0, 4, 8, 12, 16, 20, 28, 36, 44, 56, 68, 80, 96, 112, 128)
_SHORT: Final[tuple[tuple[int, ...], ...]] = (
    _SHORT_96, _SHORT_96, _SHORT_48, _SHORT_48,
    (0, 4, 8, 12, 16, 20, 24, 28, 36, 44, 52, 64, 76, 92, 108, 128),
    (0, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 60, 72, 88, 108, 128),
    (0, 4, 8, 12, 16, 20, 24, 28, 36, 44, 52, 60, 72, 88, 108, 128),
)  # fmt: skip
CLASS: Final = (0, 0, 1, 2, 2, 3, 4, 4, 5, 5, 5, 6, 6)  # by sampling index
CLASSES: Final = len(_LONG)
_MAX_ORDER: Final = (12, 7)  # TNS filter order, long and short windows (AAC-LC)


class _Bad(Exception):
    """Not a block this module reads as ffmpeg does."""


def block(data: bytes | bytearray, at: int, end: int, cls: int) -> tuple[int, int, int, int] | None:
    """(end bit, channel element: 0 SCE or 1 CPE, the highest max_sfb of a long and of a short window read, -1 if
    none) of the raw_data_block starting at bit ``at`` of ``data``, within bit ``end``, read with the band
    offsets of ``cls``; None when it is not one this module reads (above). ``data`` holds 4 bytes past ``end``
    (any: what is read there makes the block run past its end)."""
    if 8 * len(data) < end + 32:
        raise ValueError("4 bytes past the end are read")
    try:
        return _Block(data, end, cls).read(at)
    except _Bad:
        return None


def compatible(a: int, b: int, long_sfb: int, short_sfb: int) -> bool:
    """A block read with class ``a`` (its highest max_sfb of long and short windows) reads the same with ``b``."""
    return _agrees(_LONG[a], _LONG[b], long_sfb) and _agrees(_SHORT[a], _SHORT[b], short_sfb)


def _agrees(x: tuple[int, ...], y: tuple[int, ...], sfb: int) -> bool:
    return sfb < 0 or (sfb < len(y) and x[: sfb + 1] == y[: sfb + 1])


class _Block:
    __slots__ = ("d", "end", "long", "short", "used")

    def __init__(self, data: bytes | bytearray, end: int, cls: int) -> None:
        self.d, self.end = data, end
        self.long, self.short = _LONG[cls], _SHORT[cls]
        self.used = [-1, -1]  # the highest max_sfb read, long and short

    def get(self, p: int, n: int) -> int:
        """The ``n`` bits (at most 25) at bit ``p``."""
        i = p >> 3
        return int.from_bytes(self.d[i : i + 4], "big") >> (32 - (p & 7) - n) & ((1 << n) - 1)

    def read(self, p: int) -> tuple[int, int, int, int]:
        get, element = self.get, -1
        while True:
            kind = get(p, 3)
            if kind == 7:  # END
                p += 3
                break
            tag = get(p + 3, 4)
            p += 7
            if kind <= 1:  # SCE, CPE: one per block
                if element >= 0:
                    raise _Bad
                element = kind
                p = self._ics(p, None) if kind == 0 else self._cpe(p)
            elif kind == 4:  # DSE (skip_data_stream_element)
                align, count = get(p, 1), get(p + 1, 8)
                p += 9
                if count == 255:
                    count += get(p, 8)
                    p += 8
                if align:
                    p = (p + 7) & ~7
                if self.end - p < 8 * count:
                    raise _Bad
                p += 8 * count
            elif kind == 6:  # FIL: extension payloads (decode_extension_payload)
                count = tag
                if count == 15:
                    count += get(p, 8) - 1
                    p += 8
                if self.end - p < 8 * count:
                    raise _Bad
                while count > 0:
                    ext = get(p, 4)
                    p += 4
                    if ext == 11:  # dynamic range: counts the bytes it says it read
                        p, n = self._drc(p)
                        count -= n
                        continue
                    if ext not in (13, 14) or element >= 0:  # SBR before a channel element: 4 bits read
                        p += 8 * count - 4
                    count = 0
            else:  # CCE, LFE, PCE
                raise _Bad
            if self.end - p < 3:
                raise _Bad
        if element < 0 or p > self.end:
            raise _Bad
        return p, element, self.used[0], self.used[1]

    def _info(self, p: int) -> tuple[int, tuple[int, int, tuple[int, ...], tuple[int, ...]]]:
        """ics_info: (position, (short, max_sfb, window group lengths, band offsets))."""
        get = self.get
        short = int(get(p + 1, 2) == 2)  # after the reserved bit: EIGHT_SHORT_SEQUENCE
        if short:
            sfb, offsets, grouping = get(p + 4, 4), self.short, get(p + 8, 7)
            groups = tuple(len(g) + 1 for g in format(grouping, "07b").split("0"))
            p += 15
        else:
            sfb, offsets, groups = get(p + 4, 6), self.long, (1,)
            if get(p + 10, 1):  # predictor data: not allowed in AAC-LC
                raise _Bad
            p += 11
        if sfb >= len(offsets):
            raise _Bad
        self.used[short] = max(self.used[short], sfb)
        return p, (short, sfb, groups, offsets)

    def _cpe(self, p: int) -> int:
        if not self.get(p, 1):
            return self._ics(self._ics(p + 1, None), None)
        p, info = self._info(p + 1)
        ms = self.get(p, 2)
        if ms == 3:
            raise _Bad
        p += 2 + (len(info[2]) * info[1] if ms == 1 else 0)
        return self._ics(self._ics(p, info), info)

    def _ics(self, p: int, info: tuple[int, int, tuple[int, ...], tuple[int, ...]] | None) -> int:
        get, d, end = self.get, self.d, self.end
        p += 8  # global gain
        if info is None:
            p, info = self._info(p)
        short, sfb, groups, offsets = info
        width = 5 - 2 * short
        escape = (1 << width) - 1
        sections = []  # (windows in the group, first band, end band, codebook)
        for group in groups:
            k = 0
            while k < sfb:
                book = get(p, 4)
                p += 4
                if book == 12:
                    raise _Bad
                stop = k
                while True:
                    step = get(p, width)
                    p += width
                    stop += step
                    if p > end or stop > sfb:
                        raise _Bad
                    if step != escape:
                        break
                if stop > k:
                    sections.append((group, k, stop, book))
                k = stop
        run, noise = 0, True  # scale factors: one codeword a band, but the first noise band's 9 raw bits
        for _, first, stop, book in sections:
            if book == 13 and noise:
                p = _skip(_SF, d, p, run, end) + _NOISE_BITS
                run, noise = stop - first - 1, False
            elif book:
                run += stop - first
        p = _skip(_SF, d, p, run, end)
        if get(p, 1):  # pulse data
            if short:
                raise _Bad
            p += 9 + 9 * (get(p + 1, 2) + 1)
        else:
            p += 1
        if get(p, 1):  # TNS
            p += 1
            for _ in range(8 if short else 1):
                filters = get(p, 2 - short)
                p += 2 - short
                if filters:
                    resolution = get(p, 1)
                    p += 1
                    for _ in range(filters):
                        order = get(p + 6 - 2 * short, 5 - 2 * short)
                        p += 11 - 4 * short
                        if order > _MAX_ORDER[short]:
                            raise _Bad
                        if order:
                            p += 2 + order * (resolution + 3 - get(p + 1, 1))
        else:
            p += 1
        if get(p, 1):  # gain control
            raise _Bad
        p += 1
        for group, first, stop, book in sections:
            if 1 <= book <= 11:
                p = _skip(book - 1, d, p, group * (offsets[stop] - offsets[first]) // (4 if book <= 4 else 2), end)
        return p

    def _drc(self, p: int) -> tuple[int, int]:
        """decode_dynamic_range: (position, the bytes it counts)."""
        get = self.get
        n = bands = 1
        if get(p, 1):  # PCE tag
            p, n = p + 8, n + 1
        p += 1
        if get(p, 1):  # excluded channels: 7 bits, and a bit for more while fewer than 57
            p += 1
            excluded = 0
            while True:
                p, excluded = p + 7, excluded + 7
                if excluded >= 57:
                    break
                p += 1
                if not get(p - 1, 1):
                    break
            n += excluded // 7
        else:
            p += 1
        if get(p, 1):  # bands
            bands += get(p + 1, 4)
            p, n = p + 9 + 8 * bands, n + 1 + bands
        else:
            p += 1
        if get(p, 1):  # program reference level
            p, n = p + 8, n + 1
        p += 1
        return p + 8 * bands, n + bands


# --- the codebooks' automata ------------------------------------------------------------------------
# States: 0 the root, 1-7 "skip that many bits, then the root" (a run starting within a byte), 8 an escape too
# long (ffmpeg's error: nothing completes any more), then the tree's inner nodes, then the places in a
# codeword's tail: ("f", bits left, escapes after) and ("o", ones so far, escapes left) in an escape's ones.
_ROOT, _ERROR = 0, 8
_AUTOMATA: list[_Automaton | None] = [None] * 12
_UNBUILT: Final = [1023] * 256


def _skip(book: int, d: bytes | bytearray, p: int, count: int, end: int) -> int:
    """The bit after ``count`` codewords of ``book`` (and their sign and escape bits) from bit ``p``."""
    if not count:
        return p
    auto = _AUTOMATA[book] or _automaton(book)
    rows, state, at, last = auto.rows, p & 7, p >> 3, min(len(d), (end + 7) >> 3)
    view = memoryview(d)
    while True:
        for i, byte in enumerate(view[at:last], at):  # noqa: B007 (i: where it stopped, read below)
            v = rows[state][byte]
            count -= v & 1023
            if count <= 0:
                break
            state = v >> 10
        else:
            raise _Bad  # the data (or the block) ends first
        if rows[state] is not _UNBUILT:
            return 8 * i + auto.ends(state, byte, count + (v & 1023))
        count += v & 1023  # (a row not built yet: build it, and go on from this byte)
        auto.build(state)
        at = i


def _automaton(book: int) -> _Automaton:
    auto = _AUTOMATA[book] = _Automaton(_codebooks()[book])
    return auto


class _Automaton:
    """A codebook's codewords and tails read a byte at a time: ``rows[state][byte]`` is the state after the byte
    times 1024 plus the codewords it completes (a row is built when first reached: until then its entries say
    1023 codewords, more than a run holds, so that the reading stops there)."""

    def __init__(self, leaves: dict[str, tuple[int, int]]) -> None:
        names: list[tuple[str, str | int, int]] = [("n", "", 0)]
        names += [("s", k, 0) for k in range(1, 8)] + [("e", 0, 0)]
        names += sorted({("n", code[:n], 0) for code in leaves for n in range(1, len(code))})
        names += [("f", r, e) for r in range(1, 13) for e in range(3)]
        names += [("o", n, e) for n in range(9) for e in (1, 2)]
        ids = {name: i for i, name in enumerate(names)}

        def tail(fixed: int, escapes: int) -> tuple[int, int]:
            if fixed:
                return ids["f", fixed, escapes], 0
            return (ids["o", 0, escapes], 0) if escapes else (_ROOT, 1)

        self.bit: list[tuple[int, int]] = []  # (state, bit) -> (next state, a codeword ended)
        for kind, x, escapes in names:
            for bit in (0, 1):
                if kind == "s":
                    self.bit.append((int(x) - 1 if int(x) > 1 else _ROOT, 0))
                elif kind == "e":
                    self.bit.append((_ERROR, 0))
                elif kind == "n":
                    code = f"{x}{bit}"
                    self.bit.append(tail(*leaves[code]) if code in leaves else (ids["n", code, 0], 0))
                elif kind == "o":  # an escape's ones (at most 8), then its zero and n + 4 bits
                    n = int(x)
                    step = (ids["o", n + 1, escapes], 0) if n < 8 else (_ERROR, 0)
                    self.bit.append(step if bit else tail(n + 4, escapes - 1))
                else:
                    self.bit.append(tail(int(x) - 1, escapes))
        self.rows: list[list[int]] = [_UNBUILT] * len(names)
        self._values: dict[int, int] = {}  # the values rows hold, one int object each
        self._ends: dict[int, int] = {}  # (state, byte, count) -> the bit after the count-th codeword
        self._half: dict[int, list[tuple[int, int]]] = {}

    def build(self, state: int) -> None:
        row, values, high = [], self._values, self._nibbles(state)
        for byte in range(256):
            s, done = high[byte >> 4]
            s, more = self._nibbles(s)[byte & 15]
            v = s << 10 | (done + more)
            row.append(values.setdefault(v, v))
        self.rows[state] = row

    def _nibbles(self, state: int) -> list[tuple[int, int]]:
        """(the state after, codewords completed) for each 4 bits from ``state``."""
        got = self._half.get(state)
        if got is None:
            got = []
            for nibble in range(16):
                s, done = state, 0
                for k in range(3, -1, -1):
                    s, ended = self.bit[2 * s + (nibble >> k & 1)]
                    done += ended
                got.append((s, done))
            self._half[state] = got
        return got

    def ends(self, state: int, byte: int, count: int) -> int:
        """The bit (1 to 8) of ``byte`` after which the ``count``-th codeword from ``state`` ends."""
        key = (state << 8 | byte) << 4 | count
        bit = self._ends.get(key)
        if bit is None:
            s, left = state, count
            for k in range(8):
                s, ended = self.bit[2 * s + (byte >> (7 - k) & 1)]
                left -= ended
                if not left:
                    break
            else:
                raise _Bad  # (the row said they were there)
            bit = k + 1
            if len(self._ends) < 1 << 16:
                self._ends[key] = bit
        return bit


@cache
def _codebooks() -> tuple[dict[str, tuple[int, int]], ...]:
    """Per codebook, each codeword and what follows it: a sign bit per non-zero unsigned value, an escape per 16."""
    raw = zlib.decompress(base64.b85decode("".join(_PACKED)))
    bits = format(int.from_bytes(raw, "big"), f"0{8 * len(raw)}b")
    out, p = [], 0
    for book, size in enumerate(_SIZES):
        words = {}
        dim, per, signed = _VALUES[book] if book != _SF else (1, 1, True)
        for index in range(size):
            n = int(bits[p : p + 5], 2)
            values = [index // per ** (dim - 1 - i) % per for i in range(dim)]
            words[bits[p + 5 : p + 5 + n]] = (0, 0) if signed else (sum(1 for v in values if v), values.count(16))
            p += 5 + n
        out.append(words)
    return tuple(out)
