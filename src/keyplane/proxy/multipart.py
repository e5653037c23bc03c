"""The text fields of a multipart/form-data body (images and audio uploads), read strictly.

Admission needs ``model``, ``n``, ``size``, ``quality`` and friends from uploads. A body that two
parsers could read differently is a way to be priced as one model and served as another, so anything
unusual is refused rather than guessed (400 ``invalid_multipart``):

- the Content-Type's parameters are parsed as RFC 2045 tokens and quoted strings; exactly one
  ``boundary`` (1-70 characters of the RFC's alphabet);
- the body starts with the first delimiter and ends with the closing one (no preamble, nothing but
  a line break after it); every delimiter starts a line;
- each part has exactly one Content-Disposition, ``form-data`` with a ``name`` and optionally a
  ``filename`` (nothing else, no RFC 2231 ``*=`` forms) and optionally a Content-Type: any other
  part header (Content-Transfer-Encoding...) is refused;
- a text field given twice, or a field admission prices (``model``, ``n``, ``size``, ``quality``...)
  sent as a file part, is refused.
File parts are skipped (their bytes are forwarded untouched).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Final

from keyplane import errors
from keyplane.billing.audio_length import duration

MAX_TEXT_FIELD: Final = 4096  # longer text parts (prompts) are kept cut: admission never needs them whole
# Fields a price depends on: never accepted as a file part (a parser could read the file as the value).
PRICED_FIELDS: Final = frozenset(
    {"model", "n", "size", "quality", "background", "output_format", "response_format", "duration", "seconds"}
)
_TOKEN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM: Final = re.compile(rf'\s*;\s*({_TOKEN})\s*=\s*(?:({_TOKEN})|"((?:[^"\\\r\n]|\\.)*)")\s*')
_BOUNDARY_CHARS: Final = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


def _refuse(why: str) -> errors.APIError:
    return errors.bad_request(f"Invalid multipart/form-data body: {why}.", code="invalid_multipart")


def _params(value: str, what: str) -> tuple[str, dict[str, str]]:
    """(the value before the first ';', {lower-cased name: value}) of a header; duplicates refused."""
    head, sep, rest = value.partition(";")
    out: dict[str, str] = {}
    pos = 0
    rest = sep + rest if sep else ""
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None:
            raise _refuse(f"the {what} header has a parameter that is not `name=value`")
        name = m.group(1).lower()
        if name.endswith("*"):
            raise _refuse(f"RFC 2231 parameters ({name}=) are not accepted in the {what} header")
        if name in out:
            raise _refuse(f"the {what} header names `{name}` twice")
        raw = m.group(3)
        out[name] = m.group(2) if raw is None else re.sub(r"\\(.)", r"\1", raw)
        pos = m.end()
    return head.strip().lower(), out


class Form(dict[str, str]):
    """The text fields of a multipart body, and the length of its audio (billing/audio_length.py) for the
    per-minute price of a transcription: :meth:`audio_length` is an upper bound of the seconds the body's one
    file part, named ``file`` (its filename's extension naming the format found), decodes to, when keyplane
    read that part whole before admission; None when it
    did not (an upload streaming through), when the body has other file parts (which one the provider reads
    is not keyplane's to guess), or when the file is not one keyplane can bound."""

    __slots__ = ("_file", "_filename", "_length", "files")

    def __init__(self) -> None:
        super().__init__()
        self.files = 0  # the body's file parts (an edit's input images), as parsed: never a byte count
        self._file: memoryview | None = None  # the file part, measured on first use (admission, off the loop)
        self._filename = ""
        self._length: Fraction | None = None

    def audio_length(self) -> Fraction | None:
        if self._file is not None:
            self._length, self._file = duration(self._file, self._filename), None
        return self._length

    def set_audio_length(self, length: Fraction | None) -> None:
        """The length measured as the file part streamed in (proxy/uploads.py)."""
        self._file, self._length = None, length


def text_fields(headers: list[tuple[bytes, bytes]], body: bytes) -> Form:
    out = Form()
    files: list[tuple[str, str, int, int]] = []
    for name, filename, start, end in _spans(headers, body):
        if filename is not None:
            if name in PRICED_FIELDS:
                raise _refuse(f"the field `{name}` is sent as a file")
            files.append((name, filename, start, end))
            continue
        if name in out:
            raise _refuse(f"the field `{name}` is given twice")
        out[name] = body[start : min(end, start + MAX_TEXT_FIELD)].decode("utf-8", "replace")
    out.files = len(files)
    if len(files) == 1 and files[0][0] == "file" and "file" not in out:
        _, out._filename, start, end = files[0]
        out._file = memoryview(body)[start:end]  # no copy: the body is held for the request anyway
    return out


def file_part(headers: list[tuple[bytes, bytes]], body: bytes, field: str = "file") -> bytes:
    """The bytes of the one file part named ``field`` (a batch input file), read as strictly as the text
    fields; a body with none, or two, is refused."""
    found = [content for name, filename, content in _parts(headers, body) if name == field]
    if len(found) != 1:
        raise _refuse(f"it must have exactly one `{field}` part")
    return found[0]


def _parts(headers: list[tuple[bytes, bytes]], body: bytes) -> list[tuple[str, str | None, bytes]]:
    """(name, filename or None, content) of each part."""
    return [(name, filename, body[start:end]) for name, filename, start, end in _spans(headers, body)]


def _spans(headers: list[tuple[bytes, bytes]], body: bytes) -> list[tuple[str, str | None, int, int]]:
    """(name, filename or None, where its content starts and ends in ``body``) of each part."""
    ctypes = [v for k, v in headers if k == b"content-type"]
    if len(ctypes) != 1:
        raise _refuse("it needs exactly one Content-Type header")
    _, params = _params(ctypes[0].decode("latin-1"), "Content-Type")
    boundary = params.get("boundary")
    if boundary is None or not _BOUNDARY_CHARS.fullmatch(boundary):
        raise _refuse("the Content-Type needs one boundary of 1 to 70 allowed characters")
    delim = b"--" + boundary.encode("latin-1")
    if not body.startswith(delim + b"\r\n"):
        raise _refuse("the body must start with the boundary (no preamble)")
    parts = body[len(delim) + 2 :].split(b"\r\n" + delim)
    closing = parts.pop()
    if not parts or not closing.startswith(b"--") or closing[2:] not in (b"", b"\r\n"):
        raise _refuse("it must end with the closing boundary and nothing after it")
    out: list[tuple[str, str | None, int, int]] = []
    at = len(delim) + 2  # where the part starts in the body
    for i, part in enumerate(parts):
        next_at = at + len(part) + 2 + len(delim)
        if i > 0:
            if not part.startswith(b"\r\n"):
                raise _refuse("a boundary is not followed by CRLF")
            part = part[2:]
            at += 2
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            raise _refuse("a part has no header block")
        name, filename = _disposition(head)
        start = at + len(head) + 4
        out.append((name, filename, start, start + len(content)))
        at = next_at
    return out


def _disposition(head: bytes) -> tuple[str, str | None]:
    disposition: str | None = None
    for line in head.split(b"\r\n"):
        key, colon, value = line.partition(b":")
        k = key.strip().lower()
        if not colon or k not in (b"content-disposition", b"content-type"):
            raise _refuse("a part has a header other than Content-Disposition and Content-Type")
        if k == b"content-disposition":
            if disposition is not None:
                raise _refuse("a part has two Content-Disposition headers")
            disposition = value.decode("latin-1")
    if disposition is None:
        raise _refuse("a part has no Content-Disposition")
    kind, params = _params(disposition, "Content-Disposition")
    if kind != "form-data" or "name" not in params or set(params) - {"name", "filename"}:
        raise _refuse("a part's Content-Disposition must be form-data with a name (and optionally a filename)")
    return params["name"], params.get("filename")
