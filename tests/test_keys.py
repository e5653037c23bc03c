"""Key format: checksum catches every single-character change; digests and redaction."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from keyplane import keys

PRINTABLE = st.characters(min_codepoint=33, max_codepoint=126)


@given(kind=st.sampled_from(keys.KINDS), data=st.data())
def test_any_single_character_change_fails_the_checksum(kind, data):
    k = keys.generate(kind)
    assert keys.parse(k) == kind
    i = data.draw(st.integers(0, len(k) - 1), label="position")
    c = data.draw(PRINTABLE.filter(lambda ch: ch != k[i]), label="new character")
    assert keys.parse(k[:i] + c + k[i + 1 :]) is None


@given(kind=st.sampled_from(keys.KINDS), data=st.data())
def test_insertions_and_deletions_fail(kind, data):
    k = keys.generate(kind)
    i = data.draw(st.integers(0, len(k) - 1))
    assert keys.parse(k[:i] + k[i + 1 :]) is None
    assert keys.parse(k[:i] + data.draw(PRINTABLE) + k[i:]) is None


def test_format_and_entropy():
    k = keys.generate("proj")
    assert k.startswith("sk-kp-proj-") and len(k) == len("sk-kp-proj-") + keys.BODY_LEN + keys.CHECK_LEN
    assert keys.BODY_LEN * 5.954 >= 192  # log2(62) = 5.954 bits per character
    assert len({keys.generate("svc") for _ in range(1000)}) == 1000


def test_digest_is_keyed_and_matches_sha256_route():
    k = keys.generate("svc")
    d = keys.digest(b"secret", k)
    assert d != hashlib.sha256(k.encode()).hexdigest()
    assert d != keys.digest(b"other", k)
    assert keys.digest_of_sha256(b"secret", keys.sha256_hex(k)) == d
    expected = hmac.new(b"secret", hashlib.sha256(k.encode()).digest(), hashlib.sha256).hexdigest()
    assert d == expected


def test_redact_and_mask():
    k = keys.generate("proj")
    assert keys.redact(k) == "sk-kp-proj-..." + k[-4:]
    m = keys.mask(k)
    assert m.startswith(k[:8]) and m.endswith(k[-4:]) and m.count("*") == len(k) - 12
    assert keys.mask("short") == "*****"


def test_parse_rejects_garbage():
    for v in ["", "sk-kp-", "sk-kp-user-" + "a" * 39, "Bearer x", "sk-kp-proj-" + "a" * 38]:
        assert keys.parse(v) is None


@given(n=st.integers(0, 2**32 - 1))
def test_checksum_digits_are_crc32_in_base62(n):
    """checksum() builds the 6 digits by pairs: the same as the digit-by-digit _b62 of the CRC32."""
    head = "sk-kp-svc-" + keys._b62(n, keys.BODY_LEN)
    import zlib

    assert keys.checksum(head) == keys._b62(zlib.crc32(head.encode("ascii")), keys.CHECK_LEN)
    assert keys._PAIRS[n % 3844] == keys._b62(n % 3844, 2)


@given(value=st.text(max_size=80), secret=st.binary(min_size=0, max_size=100))
def test_digest_is_hmac_sha256_of_sha256(value, secret):
    """digest() reuses one keyed HMAC per secret (a copy per key): the same bytes as a fresh hmac.new."""
    want = hmac.new(secret, hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest(), hashlib.sha256)
    try:
        got = keys.digest(secret, value)
    except UnicodeEncodeError:
        return  # lone surrogates: refused before and after alike
    assert got == want.hexdigest()
    assert keys.digest(secret, value) == got  # twice, from the kept HMAC


def test_digest_without_openssl_hmac_is_the_same(monkeypatch):
    """A Python without _hashlib's HMAC: hmac.HMAC does the same digest."""
    k = keys.generate("svc")
    want = keys.digest(b"secret-a", k)
    assert keys._openssl_hmac is not None  # this machine's Python has it: the fast object is what serves
    monkeypatch.setattr(keys, "_openssl_hmac", None)
    monkeypatch.setattr(keys, "_HMACS", {})
    assert keys.digest(b"secret-a", k) == want
    assert isinstance(keys._HMACS[b"secret-a"], hmac.HMAC)
