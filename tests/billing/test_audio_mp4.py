"""MP4/M4A (AAC) measured as an upper bound of what ffmpeg decodes (billing/audio_mp4.py, audio_aac.py, issue 17).

The files are built here: boxes by :func:`m4a`, AAC blocks bit by bit (the smallest frames: one channel element
with no bands, 4 bytes mono or 7 stereo, 1024 samples of silence each), and the packets of two short real files
(ffmpeg's native encoder; 8 kHz mono and 22.05 kHz stereo: long and grouped short windows, noise and all 11
spectral codebooks between them). The ``ffmpeg:`` figures are what ffmpeg 5.1 (Debian 12) decoded from the same
bytes: ``ffmpeg -v error -i FILE -f s16le -ac 1 -ar 48000 -`` (PCM bytes / 2 / 48000); ffmpeg is not needed to
run these tests.
"""

from __future__ import annotations

import base64
import struct
from fractions import Fraction

import openai
import pytest
from openai import OpenAI

from keyplane.billing import audio_aac
from keyplane.billing.audio_length import Meter, duration
from tests.billing.conftest import billing_of, set_spend_limit
from tests.billing.test_audio_length_gateway import PER_SECOND

MARGIN = Fraction(1, 10)


def box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full(kind: bytes, *parts: bytes, version: int = 0) -> bytes:
    return box(kind, bytes([version, 0, 0, 0]), *parts)


class Bits:
    def __init__(self) -> None:
        self.s = ""

    def put(self, value: int, n: int) -> Bits:
        self.s += format(value, f"0{n}b") if n else ""
        return self

    def bytes(self) -> bytes:
        s = self.s + "0" * (-len(self.s) % 8)
        return int(s, 2).to_bytes(len(s) // 8, "big")


def asc(index: int, channels: int, aot: int = 2, tail: int = 0) -> bytes:
    """An AudioSpecificConfig: object type, rate index, channels, then (frame length, core coder, extension)."""
    return Bits().put(aot, 5).put(index, 4).put(channels, 4).put(tail, 3).bytes()


def ics(b: Bits, sfb: int = 0) -> Bits:
    """An individual channel stream with no bands: gain, long window info, no pulse, TNS or gain control."""
    return b.put(100, 8).put(0, 1).put(0, 2).put(0, 1).put(sfb, 6).put(0, 1).put(0, 3)


def sce(b: Bits | None = None) -> bytes:
    b = b or Bits()
    return ics(b.put(0, 3).put(0, 4)).put(7, 3).bytes()  # SCE, then END: 32 bits


def cpe() -> bytes:
    return ics(ics(Bits().put(1, 3).put(0, 4).put(0, 1))).put(7, 3).bytes()  # no common window


def dse(n: int) -> Bits:
    """A data stream element of ``n`` bytes (at most 510), then the SCE."""
    b = Bits().put(4, 3).put(0, 4).put(0, 1).put(min(n, 255), 8)
    if n >= 255:
        b.put(n - 255, 8)
    return b.put(0, 8 * n)


def esds(config: bytes, oti: int = 0x40) -> bytes:
    dsi = bytes([5, len(config)]) + config
    dcd = bytes([4, 13 + len(dsi), oti, 0x15]) + bytes(11) + dsi
    es = bytes([3, 3 + len(dcd) + 3, 0, 1, 0]) + dcd + b"\x06\x01\x02"
    return full(b"esds", es)


def mp4a(config: bytes, kids: bytes = b"", version: int = 0, fmt: bytes = b"mp4a", oti: int = 0x40) -> bytes:
    return box(fmt, bytes(6) + b"\0\1" + struct.pack(">H", version) + bytes(6) + b"\0\2\0\x10" + bytes(4)
               + struct.pack(">I", 44100 << 16), esds(config, oti), kids)  # fmt: skip


def m4a(
    packets: list[bytes],
    config: bytes,
    rate: int,
    *,
    moov_first: bool = False,
    delta: int = 1024,
    stts: bytes | None = None,
    stsz: bytes | None = None,
    stsc: bytes | None = None,
    elst: bytes | None = None,
    declared: int | None = None,
    entry: bytes | None = None,
    trak: bytes = b"",
    moov: bytes = b"",
    top: bytes = b"",
    handler: bytes = b"soun",
    brand: bytes = b"M4A ",
    shift: int = 0,
) -> bytes:
    """An m4a of one AAC track, a packet a chunk: ``declared`` is what mvhd, tkhd and mdhd say the samples last."""
    n = len(packets)
    says = n * delta if declared is None else declared

    def build(at: int) -> bytes:
        offsets, o = [], at + shift
        for p in packets:
            offsets.append(o)
            o += len(p)
        sizes = struct.pack(">II", 0, n) + b"".join(struct.pack(">I", len(p)) for p in packets)
        stbl = box(
            b"stbl",
            full(b"stsd", struct.pack(">I", 1), entry if entry is not None else mp4a(config)),
            full(b"stts", stts if stts is not None else struct.pack(">III", 1, n, delta)),
            full(b"stsc", stsc if stsc is not None else struct.pack(">IIII", 1, 1, 1, 1)),
            full(b"stsz", stsz if stsz is not None else sizes),
            full(b"stco", struct.pack(">I", n), *(struct.pack(">I", x) for x in offsets)),
        )
        dinf = box(b"dinf", full(b"dref", struct.pack(">I", 1), box(b"url ", b"\0\0\0\1")))
        mdia = box(
            b"mdia",
            full(b"mdhd", struct.pack(">IIIIHH", 0, 0, rate, says, 0x55C4, 0)),
            full(b"hdlr", bytes(4) + handler + bytes(12) + b"SoundHandler\0"),
            box(b"minf", full(b"smhd", bytes(4)), dinf, stbl),
        )
        tkhd = full(b"tkhd", struct.pack(">IIIII", 0, 0, 1, 0, says) + bytes(60))
        edts = box(b"edts", elst) if elst is not None else b""
        mvhd = full(b"mvhd", struct.pack(">IIII", 0, 0, rate, says) + bytes(80))
        return box(b"moov", mvhd, box(b"trak", tkhd, edts, mdia, trak), moov)

    ftyp = box(b"ftyp", brand + b"\0\0\2\0isomiso2mp41")
    mdat_box = box(b"mdat", b"".join(packets))
    if moov_first:
        head = ftyp + top
        size = len(build(0))
        return head + build(len(head) + size + 8) + mdat_box
    return ftyp + top + mdat_box + build(len(ftyp) + len(top) + 8)


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    out, at = [], 0
    for n in sizes:
        out.append(data[at : at + n])
        at += n
    return out


# ffmpeg's native AAC encoder (8 kHz mono, clicks and noise, TNS and PNS on: 5 frames; 22.05 kHz stereo, a tone
# with clicks, intensity and M/S stereo: 8 frames); the first packet of each carries the encoder's name.
M1_CONFIG = bytes.fromhex("158856e500")  # AAC-LC, 8 kHz, mono, then the SBR sync extension (SBR off)
M1 = split(base64.b85decode(
    "-U0wjVRmCRIW99dE-^4L00NAtSlh5W6$--qb^X&OR~f3!Ops)&sH;g@r~hGhvS7B&f2<P-`SM5l=TF?+k@wFh@2=$Zc6swvg&?~ryh&~{05U}w"
    "vpGN@zzQHC2PS#cfkw%D=Y_K}zEa9~fP_#5Qpm{){PUK_>I*t0j}Ql#lV*M|e3Pw}^#lP0*-_(M&pvKYYjo!MP$!>G`J~9qVPG=8MwTp4x^*KM"
    "gA`FLnNe<<N;-V;kqHYZMN)_euy1;LLWo7v<xfi`i$AZfSBM8@n<a}Sx{SqcVrguthAyG$;jwbPbCu)2sXI76!gX(>K3+TwR1moY)r@0QI3&)S"
    "J2F<Xns!~KT5;lA%x&)Oz>prInA>uVA)gk8x^1;iyYT7gTv`T$NJjNUZ<ix|X~y;hXNYV1Q$^nyZz5&7`!nuMbDp}F$-URnz6a~xv-R(d>@Q*V"
    "FJbZR^TfCg`tuHV>y4MUHs4^v^`;l-ncpbsZL)9``~y;=Xgk2AD0?VaCaSKDbNW>-hYPp3t-e3b9|?;F9+JkQK65*O%<AdF0ilP<HEYZpAzwEx"
    "Aey)#E-^fZ9gs^U!EDaPPq667@;8(4pDH2Mdigt;VjP<|PqOxM6f2YKJsgJ^>g4i#)P)SGKC|MYTP%4#0nrFS;)L}**p~>x-EAS$JWfZ0@v>X2"
    "i5v!ao|^zqF+7J0<HYw~EhpeC!8trMmjT5P<QIwZ&j=InCj{UDYM$7CHcN!6P}wM**-yj$GOJ6<wPW@BYkXuWD>eRqpa4Je|HmAF0UJ(K*Jk)h"
    "XhHKSL{wbhTES4E!h+Wj>FFwkLpq0w1yw?b$sE+uE?MJV7f#t1Rl5OQikOEWrotdC$)#5ok0#r^6D77r>egpby}P;i|HqfB?(Yf-h@|^gO4WS}"
    "FPkN&Ej;I-txtBf`zBYxI0V^Rg3X(kwN;KGiH<GQ*s`jvNcJQQ25wY&i$b#xGW2LKS}dpwHrt9~rOK1*Qgr2tW-VA1H%6q=94_G$;=K`<De0AQ"
    "4?QHuuFppr50u@_h>7_P_r-5Uc;cJtv#J0ssi8OBU+cyQq}BPj0ZN~>$omBi82nL>Y{6pJy1JDwI{3(`N^5cB&69VCz<t-Ze%#Ke*-u5U<)y21"
    "FybR3H;0b)y>D7*rK{B|WRnAoBe&Ts>oM@;zlp=@ZF93HpmPYbK8l7Fxa%2)1GoU>LB6J8az1YPX1P1M9oR2AI=2>3Li@^wx|>sKDgy{HqBBCK"
    "t}%FZ!LC8jL?dqg83ulB3|)ApXD3~}=_J<xaIsA}g|8ouna!d_dMPz&CQ1aVjAau;09M0}DU05g=juhUc0SO89y)JPV7WDv6@o1YDb~W>N;wzd"
    "s}2S&@=8o|8cOOqDKdmu)2~FK-(po3M?D$z>zPi<t-RIAAOt5{QBeYINC%R4=R!@5GCMa>E+qS6N7J{PSFYcWe>oB==@J`G^hfPvT1lTAQ6jge"
    "E-Y)Q;iG2tCrhp3xFwtO4^Kl!h}b7aiD$#NBJS@Z>Q@-(m5JGUv;7{yr~S_JNV2Dh=+k!>8CgtjlbH8<iWzpD#i7?{rMZggl{JkkfB{0Erb%{^"
    "&3-Lc!TD_|bRyU7bDk+xFLONJP5pDvT<W~|4}Rb8(fD!bKTVR@wNrr+jnnV6Q!(z4B{tFO<P^-G@fo)j$Vw9>Gm0##h6G7}MM^S(TBlI4(2W<f"
    "=lU==LQ_U0qv-2;!e|7pf6f5tdwwb3>XN<ee@!lxN=;!dg>Tle`1=_^6>-MIW!6>baGKUPNvYM+FU<G}WIab)8{J8kvddx|`L?(W4Y0sGlL_(~"
    "TzV!q-F^nr^SIQYo+r%!eUb+m7`VU-mc!X+XD6<kT3Ri@);KGx4P}nijk?ieSyx`x5hnajYgKBluLS>emH#IAuF(aW4)Lm8*?O;8eL>B3b!sv%"
    "u`wXtMM_==jM9YziEw+)(^&?~N@&PA9y{eRq@b4)v=}Vw6<SK9%1lzeJJoic0T_X_Z~"
), [567, 265, 393, 319, 5])  # fmt: skip
S1_CONFIG = bytes.fromhex("139056e500")  # AAC-LC, 22.05 kHz, stereo
S1 = split(base64.b85decode(
    "-U0wjVRmCRIW99dE-^4L076r$>ry;bp&;m*!!E?SN(iVRT|FQlOEBnbiL&CqNZZrv`V0+P7Mbkw5rL>sfcA_G`e*vT)C|pvd6EVO7QK4*Z&A6R"
    "47^(P!)DLhZ8y?|pSSJh-@iz3+52DczWSYZM&H-^{u|*yikGMBs(HW*qOOZ$LKIN?6b^-XeAyYrXA-JJ#Db;dsP|BKYaL3u>h2J-6QoXo8K1Ts"
    "t3=V$(fa*<x~HoXQAHg;uh;5$KsEGqbbh^Oo*@RhI(j;~r>OuzLfe@pa9($)-V+7}24@4>k?Jo5j@fGVJI#d6q|L`m^)r<1KVb0y7Ji^vP!MB)"
    "Ax&*v7kccMwoBV3>-|5+w_auOrOvPZ-|_nS<5zmS)&Ecb59iMsyVc&W`v3I)eDSSbwR+G&vwQ!(pRb?G<^2Bp*6|2xrji`OIJ*R(9G>lj!*RMe"
    "zWMz=JN|#)mmiP6@0ZK#{`>#F-`~gYpa1{+{{LU^f4|%9_W1e#dH$bo&->r!`~Lkuf1lU)=l=YDKi{AK!8d0~U^d@Rp?k3^x$<}|up#O<Z2S5D"
    "`MP$0vVZ@-zmM<d?eF^g|9;<Z*T4V&`Tu@CfA9Ctx8?Hc{C<9)|DXTo_5S{UAD`#*^Yi_Dd;WhPugN@JGF~#mn_u_0<?;0Ve*XVnKd;x%_xAk$"
    "exLu9JrV0&k@m>@WPNYjD^gWF>H7cE+1D$|WdCpf57w_YtR{cI|A+c^zZZ3vK!?x(`$h)?`lOBtly!tq089V?000002oSl|cA)KRBvf4JumAu6"
    "000000;GX}-v9sufFPqy+hsknKG{ySzJFgj)!wytum8F4`}M}I^{dtY{h!b8=Z#(KP5oHQKfI$W65mysRHd?`fX)&O;ULZu4B;Ta&fy^-z|P?z"
    "Ai&PyAt1oO&h8Qt5)2Fs?%^RJAi%)D&hFtMAt5}6;+?Xf@;3cI)i<7RJm1c5=QH{F^^fQL^^fQL^~`@i=lu1|KcDmddi8_(|3ByF*D=LwyRm)I"
    "Z#Huhm>A$Oz+jnyfr3s00|bPF16I9CIdeim(1^4o6XWyFdA~E3x7Q}BZFHqIRVnc$O~IcO5-DdvGA?Um7|>an%(20%L*`>JIHnU&5WKd*dNHU`"
    "S3@LS3OG!{YNRlrfD8t5#2=fJ5`h3`I9?UZC)z4B@;Yv5fKVpQ2EN^4mlzw2hrPBRgEoEg;oXSN3F8_z1aKgzP19vC>m}`!>s^uc-}C2MxvgHW"
    "|L%JIeCt<w)!x7U@9ozYIF(OktL>}2l51082LXj<wLU6R*C|!X61hTNP?wY?;Qn98gZY0WQ~7@)2lD=3$Z9{A^8P{t`F}6v{DL{40bY117ZLIw"
    "A@Uy~^7#Ss`2q6z0rL5LfFCcH$N}>Ce7-;d)peOxV0|M4+kt`fj7ffUcGM(c;&~ky9!6XThbhkq{4oO$h+^r3$QDCUf&p?Ag?bSdgogjy`+d9q"
    "Z_jyo6E9q=jLtTcMLjPhp!Fx_brfOuAguI4t(h<>P6W_ng^QqDE4ZZi{Q7>_X;^<-Jgg)*!v|=e6y-0OiP*U+Zus!2Y2X}c!G#%ef}Ys9^re}~"
    "uPtV9>#s8R6Sft14*<PLtt4_;*K|lx74VKAp?Zb#Xhb?!uKa%!_4DWJCtK9HX(YJ_wZ{d?BoE}tkm}K*7ydp2zW(9=kAa`xK*{l#XZO%Dd}bN_"
    ";U6Cvhrhmo@$lI9_k?8lFwgEm|9~CPLnpz8e{dhn27huHJ`6Makje1#e*?+<O3|qS0LcrwQVxaw-_zfJ=*jC>H+6Mw#%n57rsLo&JtO>EvQ>Q7"
    "Yi%bA$xo|rycuuK1t#wu$23e@APY!9a0NyU;I=R&`PNsXpvzINTPW+a_88wmnL`s&VN7U17p!@V58GYeP*3L=Bh>sM8kBK-nsry(|L*>O_5aph"
    "uUB&9l1Pyx5y2uzKRP}CCo#U?|G(4w_x%2TU$3Xn{qz2RzJE{u<MI0beg5Asm+$NQ`+dJZKexZ@`TYHSzhCd?zyIy^`Tqaj|G%&E>Gk*jeSUxc"
    "pUe65`1*YQUmxG^_xbevem;Kxucy!H`uP3+fB*l#_QgU0au0N39T5fpxAyhx_x9(Tmy%UhsdQ5`R%z&EAmrt3Kmecu#YzRPt=!R0WC(z;gyjJ~"
    "HHA&UD3}fL;^h2W7U@|7*rZI;t2U+|fFT-{iF~?bxBNd|y!>-h+a7k}nyplkB#7HW53k$ol(+WVwojkW=f2ObxxU}&zdQewRVT~G<=dzDTRxvT"
    "JbC&)-%tPF?cMX!_Wtqj`u;!u-`}tE<@EUL{pA0BKOcXm^Y8uo|36wjpTDQ;=luVEfB!%4`|JGs|M_(MzQ5m(kB`^ef4{%-vCe(bAao=qufJXX"
    "^{UNP(5Mn*%T!VIAqSzn=JOT+0bmmWcoiTR011N_W(l*d3D%$x0dUHnRbuKrL8_^6latD0Ol4gM;^+P?nNii@<?Rx9AsUr4D7U41-0z>G+rBPM"
    "W%0YZ)@afqS;#;kHpd?~nrm>9KxSsgAB@94zrVk^e0+R-HXZl((6RCH@NAir@9*yj_%=_EzrI$}@9*!E<LUDF`?;UrLbG#xe0+Ro_tE+H$?@^<"
    "|3AOH-x<CA^89DX@t@!2o8ZGgzrVQ;_tW3sFUQBn-hPE8K4?TbA{xE;@xF}~rnug9wdOdj@w&Tx<8TjHrpAB(010zJlmG%z05E_60Agi@zytWi"
    "4TsI15Ci`SAO=TCq4AqOfFI1W=FbXY%s2"
), [264, 365, 317, 313, 220, 218, 223, 218])  # fmt: skip


def fed(data: bytes, name: str | None, step: int) -> Fraction | None:
    m = Meter(name)
    for i in range(0, len(data), step):
        m.feed(data[i : i + step])
    return m.result()


@pytest.mark.parametrize("moov_first", [False, True])
def test_real_files_are_their_packets_at_1024_samples(moov_first):
    mono = m4a(M1, M1_CONFIG, 8000, moov_first=moov_first)
    stereo = m4a(S1, S1_CONFIG, 22050, moov_first=moov_first)
    assert duration(mono, "memo.m4a") == Fraction(5 * 1024, 8000) + MARGIN  # ffmpeg: 0.64 s
    assert duration(stereo, "a.mp4") == Fraction(8 * 1024, 22050) + MARGIN  # ffmpeg: 0.37152 s
    for step in (1, 7, 300, 4096):
        assert fed(mono, "memo.M4A", step) == duration(mono)
        assert fed(stereo, None, step) == duration(stereo)


def test_the_smallest_frames():
    silence = m4a([sce()] * 235, asc(11, 1), 8000)  # 235 four-byte frames
    assert duration(silence, "a.m4a") == Fraction(235 * 1024, 8000) + MARGIN  # ffmpeg: 30.08 s
    stereo = m4a([cpe()] * 100, asc(3, 2), 48000, moov_first=True)
    assert duration(stereo, "a.m4a") == Fraction(100 * 1024, 48000) + MARGIN  # ffmpeg: 2.1333 s
    big = m4a([sce(dse(400))] * 50, asc(3, 1), 48000)  # a 400-byte data stream element in each
    assert duration(big, "a.m4a") == Fraction(50 * 1024, 48000) + MARGIN  # ffmpeg: 1.0667 s


def test_packets_holding_more_than_one_block_are_refused():
    """ffmpeg decodes every block chained in a packet, whatever the sample table says."""
    one_sample = m4a([sce() * 10_000], asc(12, 1), 7350)  # the table: 1 sample, 0.139 s
    assert duration(one_sample, "a.m4a") is None  # ffmpeg: 10,000 frames, 1393.2 s
    assert duration(m4a([sce() + sce()] * 100, asc(11, 1), 8000), "a.m4a") is None  # ffmpeg: 200 frames, 25.6 s
    # a block and a zero byte: ffmpeg skips the zeros (one frame) but this is no encoder's packet: refused too
    assert duration(m4a([sce() + b"\0"] * 100, asc(11, 1), 8000), "a.m4a") is None  # ffmpeg: 12.8 s


def test_lying_headers_do_not_shrink_the_bound():
    honest = Fraction(235 * 1024, 8000) + MARGIN  # ffmpeg: 30.08 s, whatever the headers below say
    frames = [sce()] * 235
    assert duration(m4a(frames, asc(11, 1), 8000, declared=1024), "a.m4a") == honest  # mvhd, tkhd, mdhd: 0.128 s
    assert duration(m4a(frames, asc(11, 1), 8000, delta=512), "a.m4a") == honest  # stts: 15 s
    assert duration(m4a(frames, asc(11, 1), 8000, delta=1), "a.m4a") is None  # (ffmpeg cuts chunks its own way)
    one = full(b"elst", struct.pack(">IIihh", 1, 8000, 0, 1, 0))  # one edit of 1 s from the start
    assert duration(m4a(frames, asc(11, 1), 8000, elst=one), "a.m4a") == honest  # ffmpeg: 1.024 s
    # fewer samples in stsz than packets in mdat: ffmpeg reads (and decodes) only those: 12.8 s
    fewer = struct.pack(">II", 0, 100) + struct.pack(">I", 4) * 100
    assert duration(m4a(frames, asc(11, 1), 8000, stsz=fewer), "a.m4a") == Fraction(100 * 1024, 8000) + MARGIN
    # the AudioSpecificConfig's rate is the decoder's, counted at it; blocks that do not read with its band
    # tables are refused
    assert duration(m4a(M1, asc(8, 1), 8000), "a.m4a") is None  # 16 kHz tables (ffmpeg: errors, 0.19 s)
    slow = m4a([sce()] * 100, asc(12, 1), 48000)  # the file says 48 kHz, the decoder plays 7.35 kHz
    assert duration(slow, "a.m4a") == Fraction(100 * 1024, 7350) + MARGIN  # ffmpeg: 13.9320 s


def _edit(*entries: tuple[int, int, int]) -> bytes:
    return full(b"elst", struct.pack(">I", len(entries)), *(struct.pack(">Iihh", *e, 0) for e in entries))


FRAMES = [sce()] * 20
REFUSED = {
    "fragments": dict(moov=box(b"mvex", full(b"trex", bytes(20)))),
    "a second track": dict(moov=box(b"trak", b"")),
    "a track in udta": dict(moov=box(b"udta", box(b"trak", b""))),
    "an MP2 handler in meta": dict(trak=box(b"meta", bytes(4), full(b"hdlr", bytes(4) + b"m1a " + bytes(13)))),
    "a video handler": dict(handler=b"vide"),
    "ALAC": dict(entry=mp4a(asc(11, 1), fmt=b"alac")),
    "MP3 in mp4a": dict(entry=mp4a(asc(11, 1), oti=0x6B)),
    "a v1 sound entry": dict(entry=mp4a(asc(11, 1), version=1)),
    "two entries": dict(entry=mp4a(asc(11, 1)) + mp4a(asc(11, 1))),
    "a wave box": dict(entry=mp4a(asc(11, 1), kids=box(b"wave", b""))),
    "960-sample frames": dict(entry=mp4a(asc(11, 1, tail=4))),
    "a core coder": dict(entry=mp4a(asc(11, 1, tail=2))),
    "an extension flag": dict(entry=mp4a(asc(11, 1, tail=1))),
    "AAC Main": dict(entry=mp4a(asc(11, 1, aot=1))),
    "AAC LTP": dict(entry=mp4a(asc(11, 1, aot=4))),
    "ER AAC-LC": dict(entry=mp4a(asc(11, 1, aot=17))),
    "rate index 13": dict(entry=mp4a(asc(13, 1))),
    "an explicit rate": dict(entry=mp4a(asc(15, 1))),
    "a PCE config": dict(entry=mp4a(asc(11, 0))),
    "5.1 channels": dict(entry=mp4a(asc(11, 6))),
    "a stereo config": dict(entry=mp4a(asc(11, 2))),  # (SCE blocks)
    "two edits": dict(elst=_edit((20480, 0, 1), (20480, 0, 1))),  # ffmpeg: 5.12 s, the 2.56 s twice
    "an empty edit": dict(elst=_edit((8000, -1, 1), (8000, 0, 1))),
    "an edit at rate 2": dict(elst=_edit((8000, 0, 2))),
    "stts ahead of the audio": dict(delta=1025),
    "stsc out of order": dict(stsc=struct.pack(">10I", 3, 1, 1, 1, 3, 1, 1, 2, 1, 1)),  # (ffmpeg mends it)
    "stsc of description 2": dict(stsc=struct.pack(">IIII", 1, 1, 1, 2)),
    "stsz shorter than its count": dict(stsz=struct.pack(">II", 0, 20) + struct.pack(">I", 4) * 19),
    "chunks that skip a byte": dict(shift=1),
    "a QuickTime brand": dict(brand=b"qt  "),
    "a JPEG 2000 brand": dict(brand=b"jp2 "),
    "an uuid box": dict(top=box(b"uuid", bytes(16))),
    "a wide box with content": dict(top=box(b"wide", bytes(8))),
    "a free box holding mvhd": dict(top=box(b"free", box(b"mvhd", bytes(100)))),
    "MPEG-PS in MOV": dict(moov_first=True, moov=box(b"udta", box(b"xxxx", b"hdlr\0\0\0\0mhlrMPEG"))),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_it_cannot_bound_is_refused(case):
    assert duration(m4a(FRAMES, asc(11, 1), 8000), "a.m4a") is not None
    assert duration(m4a(FRAMES, asc(11, 1), 8000, **REFUSED[case]), "a.m4a") is None  # type: ignore[arg-type]


def test_damaged_files_are_refused():
    good = m4a(FRAMES, asc(11, 1), 8000)
    assert duration(good[:-1], "a.m4a") is None  # moov cut short
    cut = m4a(FRAMES, asc(11, 1), 8000, moov_first=True)
    assert duration(cut[:-2], "a.m4a") is None  # the last packet cut short
    assert duration(good + b"\0\0\0", "a.m4a") is not None  # (ffmpeg ignores less than a box header at the end)
    assert duration(good + b"junk" * 10, "a.m4a") is None
    assert duration(m4a([cpe()] * 20, asc(11, 1), 8000), "a.m4a") is None  # stereo blocks in a mono file
    assert duration(m4a([sce(dse(500)) * 20], asc(11, 1), 8000), "a.m4a") is None  # a packet of 10 kB
    for kind in (b"moov", b"mdat"):  # twice
        at = good.index(kind) - 4
        size = int.from_bytes(good[at : at + 4], "big")
        assert duration(good + good[at : at + size], "a.m4a") is None
    moov = good.index(b"moov") - 4
    assert duration(good[:moov] + b"\0\0\0\0" + good[moov + 4 :], "a.m4a") is None  # a moov "to the end"
    assert duration(b"\0\0\0\x18ftypmp42" + bytes(1000), "a.m4a") is None


def test_only_m4a_and_mp4_names():
    f = m4a(FRAMES, asc(11, 1), 8000)
    for name in ("a.m4a", "A.MP4", "voice memo.m4a", None):
        assert duration(f, name) is not None
    for name in ("a.mp3", "a.wav", "a.m4a.ogg", "a", "a.mov", "a.3gp"):
        assert duration(f, name) is None
    assert Meter("a.m4a").hopeful and not Meter("a.mov").hopeful


def test_blocks_are_read_as_ffmpeg_reads_them():
    def end(block: bytes) -> int | None:
        got = audio_aac.block(block + bytes(4), 0, 8 * len(block), audio_aac.CLASS[11])
        return got[0] if got else None

    assert end(sce()) == 32 and end(cpe()) == 55
    # an SBR payload before the channel element: its 4-bit type is all ffmpeg reads of the FIL's 2 bytes
    assert end(sce(Bits().put(6, 3).put(2, 4).put(13, 4))) == 7 + 4 + 32  # ffmpeg: every frame decoded
    # a DRC payload excluding 9 groups of channels reads 87 bits and counts 11 bytes
    drc = Bits().put(6, 3).put(11, 4).put(11, 4).put(0, 1).put(1, 1)
    for g in range(9):
        drc.put(0x2A, 7).put(1, 1 if g < 8 else 0)
    assert end(sce(drc.put(0, 1).put(0, 1).put(0x21, 8))) == 7 + 87 + 32  # ffmpeg: every frame decoded
    # a data stream element aligned to a byte
    aligned = Bits().put(4, 3).put(0, 4).put(1, 1).put(3, 8)
    assert end(sce(aligned.put(0, -len(aligned.s) % 8).put(0xFFFFFF, 24))) == 72
    # refused: two channel elements, an LFE, gain control, prediction, an escape of 9 ones, END first
    assert end(sce() + sce()) == 32  # (the first block)
    assert end(ics(Bits().put(0, 3).put(0, 4)).put(0, 3).put(0, 4).bytes()) is None
    assert end(ics(Bits().put(3, 3).put(0, 4)).put(7, 3).bytes()) is None
    gain = Bits().put(0, 3).put(0, 4).put(100, 8).put(0, 4).put(0, 6).put(0, 1).put(0, 1).put(0, 1).put(1, 1)
    assert end(gain.put(7, 3).bytes()) is None
    assert end(Bits().put(0, 3).put(0, 4).put(100, 8).put(0, 4).put(0, 6).put(1, 1).put(0, 6).bytes()) is None
    assert end(Bits().put(7, 3).bytes()) is None


def test_the_codebooks_are_iso_14496_3s():
    books = audio_aac._codebooks()
    assert [len(b) for b in books] == [81, 81, 81, 81, 81, 81, 64, 64, 169, 169, 289, 121]
    for words in books:  # complete prefix codes: every bit string starts with exactly one codeword
        assert sum(Fraction(1, 2 ** len(w)) for w in words) == 1
        assert not any(a != b and b.startswith(a) for a in words for b in words)
    # Table 4.A.2 (book 1) index 40, the quad (0,0,0,0): "0"; Table 4.A.1 (scale factors) index 60, a
    # difference of 0: "0"; Table 4.A.12 (book 11) index 288, (16, 16): "00100", two signs and two escapes
    assert books[0]["0"] == (0, 0) and books[11]["0"] == (0, 0) and books[10]["00100"] == (2, 2)


# --- through the gateway -------------------------------------------------------------------------------


def _gateway(make_gateway, fake):  # type: ignore[no-untyped-def]
    upstream = (
        f'\n[[upstreams]]\nname = "fake2"\nbase_url = "{fake.base_url}"\n'
        'api_key_env = "KP_BILLING_TEST_UPSTREAM_KEY"\nmodels = ["whisper-*"]\n'
    )
    return make_gateway(upstream, KEYPLANE_MAX_BODY_BYTES=str(3 << 20))


def _spent(srv) -> int:  # type: ignore[no-untyped-def]
    return int(srv.call(billing_of(srv).spent("project", srv.project_id))[0])


def test_an_m4a_is_admitted_under_a_spend_limit_and_billed_its_length(make_gateway, fake):
    srv = _gateway(make_gateway, fake)
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    set_spend_limit(srv, 1)  # 1 cent: 100 seconds of whisper-1
    memo = m4a([sce()] * 235, asc(11, 1), 8000)  # ffmpeg: 30.08 s; measured 30.18 s: 31 s reserved and billed
    out = client.audio.transcriptions.create(model="whisper-1", file=("memo.m4a", memo), response_format="text")
    assert "fake" in out
    assert _spent(srv) == 31 * PER_SECOND
    # its headers say 0.128 s: it plays 30.08 s, and is billed as the first (`text` reports no duration)
    liar = m4a([sce()] * 235, asc(11, 1), 8000, declared=1024, delta=16, moov_first=True)
    client.audio.transcriptions.create(model="whisper-1", file=("liar.m4a", liar), response_format="text")
    assert _spent(srv) == 62 * PER_SECOND
    # 38 seconds left: 40 s of audio do not fit (reserved by their length), before the upstream
    sent = len(fake.model_requests())
    with pytest.raises(openai.RateLimitError):
        client.audio.transcriptions.create(
            model="whisper-1", file=("b.m4a", m4a([sce()] * 312, asc(11, 1), 8000)), response_format="text"
        )
    # one sample in the table, 10,000 blocks in it (ffmpeg: 1393 s): not bounded, refused unread
    evil = m4a([sce() * 10_000], asc(12, 1), 7350)
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.audio.transcriptions.create(model="whisper-1", file=("evil.m4a", evil), response_format="text")
    assert e.value.code == "cost_not_bounded"
    assert len(fake.model_requests()) == sent
    assert _spent(srv) == 62 * PER_SECOND


def test_a_large_m4a_sent_by_the_sdk_is_spooled_and_measured(make_gateway, fake):
    """Over 1 MiB with `model` first (the SDK's order): spooled before admission under the limit, measured as it
    is read (moov after mdat, as ffmpeg and phones write it)."""
    srv = _gateway(make_gateway, fake)
    set_spend_limit(srv, 1)
    big = m4a([sce(dse(400))] * 3000, asc(3, 1), 48000)  # 1.2 MB, 64 s (ffmpeg: 64.0 s): 65 s billed
    assert len(big) > 1 << 20
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    client.audio.transcriptions.create(model="whisper-1", file=("a.m4a", big), response_format="text")
    assert _spent(srv) == 65 * PER_SECOND
    (got,) = [r for r in fake.model_requests() if r.path == "/v1/audio/transcriptions"]
    assert big in got.body
