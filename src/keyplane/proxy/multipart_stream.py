"""A multipart/form-data body read as it arrives, as strictly as :mod:`keyplane.proxy.multipart` reads a whole one.

:class:`Parser` is fed the body chunk by chunk (:meth:`Parser.feed`, then :meth:`Parser.end`) and holds only
what it must: a part's header block, a text field's first MAX_TEXT_FIELD bytes, and the few bytes that may
start a delimiter split across two chunks. The same refusals as the whole-body reader (400
``invalid_multipart``): the body starts with the first delimiter and ends with the closing one (nothing but a
line break after it), every delimiter is followed by CRLF or ``--``, each part has one Content-Disposition
(form-data, a name, optionally a filename) and optionally a Content-Type, a priced field is never a file
part, a text field is never given twice. ``on_field`` is told each text field as it ends: it may refuse it
(a field that comes too late for a body already streaming upstream: proxy/uploads.py). With ``audio``, the
content of the body's one file part, named ``file``, is measured as it passes (billing/audio_length.py:
:meth:`Parser.audio_length`, for a transcription's per-minute price).
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Final

from keyplane.billing.audio_length import Meter
from keyplane.proxy.multipart import MAX_TEXT_FIELD, PRICED_FIELDS, _disposition, _refuse

MAX_PART_HEADER: Final = 16 * 1024  # a part's header block (Content-Disposition, Content-Type)
MAX_PARTS: Final = 1000

_START, _HEADERS, _CONTENT, _AFTER, _CLOSED = range(5)


class Parser:
    def __init__(self, boundary: bytes, on_field: Callable[[str, str, int], None], audio: bool = False) -> None:
        self.open = b"--" + boundary + b"\r\n"  # the first delimiter and its line break
        self.delim = b"\r\n--" + boundary  # every later one
        self.on_field = on_field  # (name, value, file parts seen before it)
        self.state = _START
        self.buf = bytearray()
        self.files = 0  # file parts seen (their header block read)
        self.parts = 0
        self._name = ""
        self._file = False
        self._text = bytearray()
        # The audio file part's length, measured as it passes: None once it cannot be (a second file part,
        # a text field named `file`, or stop_audio()); complete once its part ended.
        self._audio: Meter | None = Meter() if audio else None
        self._metering = False
        self._audio_done = False

    def audio_length(self) -> Fraction | None:
        """The length of the one file part, named ``file``, once it ended whole; else None."""
        if self._audio is None or not self._audio_done or self._metering or self.files != 1:
            return None
        return self._audio.result()

    @property
    def measuring(self) -> bool:
        """The one file part, named ``file``, is being measured, and what was read of it may yet bound it."""
        return self._metering and self._audio is not None and self._audio.hopeful

    @property
    def measuring_audio(self) -> bool:
        """An audio file part is (or may be) measured: feeding then costs CPU in proportion to the bytes (an MP4's AAC
        blocks are read in Python: billing/audio_mp4.py), so the upload feeds off the event loop (proxy/uploads.py)."""
        return self._audio is not None and not self._audio_done

    def stop_audio(self) -> None:
        """Measure no more (the upload streams upstream unmeasured)."""
        self._audio, self._metering = None, False

    def feed(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.state == _START:
                if len(self.buf) < len(self.open):
                    if not self.open.startswith(bytes(self.buf)):
                        raise _refuse("the body must start with the boundary (no preamble)")
                    return
                if not self.buf.startswith(self.open):
                    raise _refuse("the body must start with the boundary (no preamble)")
                del self.buf[: len(self.open)]
                self.state = _HEADERS
            elif self.state == _HEADERS:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > MAX_PART_HEADER:
                        raise _refuse("a part's header block is too long")
                    return
                self._part(bytes(self.buf[:end]))
                del self.buf[: end + 4]
                self.state = _CONTENT
            elif self.state == _CONTENT:
                at = self.buf.find(self.delim)
                if at < 0:  # keep what may be the start of a delimiter split across chunks
                    keep = len(self.delim) - 1
                    self._content(self.buf[: max(0, len(self.buf) - keep)])
                    del self.buf[: max(0, len(self.buf) - keep)]
                    return
                self._content(self.buf[:at])
                del self.buf[: at + len(self.delim)]
                self._part_end()
                self.state = _AFTER
            elif self.state == _AFTER:
                if len(self.buf) < 2:
                    return
                two = bytes(self.buf[:2])
                del self.buf[:2]
                if two == b"\r\n":
                    self.state = _HEADERS
                elif two == b"--":
                    self.state = _CLOSED
                else:
                    raise _refuse("a boundary is not followed by CRLF")
            else:  # _CLOSED: nothing but one line break may follow
                if not b"\r\n".startswith(bytes(self.buf)):
                    raise _refuse("it must end with the closing boundary and nothing after it")
                return

    def end(self) -> None:
        """The body is complete: it must have ended with the closing boundary."""
        if self.state != _CLOSED or not self.parts or bytes(self.buf) not in (b"", b"\r\n"):
            raise _refuse("it must end with the closing boundary and nothing after it")

    def _part(self, head: bytes) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise _refuse(f"it has more than {MAX_PARTS} parts")
        name, filename = _disposition(head)
        self._name, self._file = name, filename is not None
        self._text.clear()
        if self._file:
            if name in PRICED_FIELDS:
                raise _refuse(f"the field `{name}` is sent as a file")
            self.files += 1
        if self._audio is not None:
            if self._file and self.files == 1 and name == "file":
                self._metering = True
                self._audio.filename = filename or ""
            elif self._file or name == "file":
                self.stop_audio()

    def _content(self, data: bytearray) -> None:
        if self._metering and self._audio is not None:
            self._audio.feed(data)
        elif not self._file and len(self._text) < MAX_TEXT_FIELD:
            self._text += data[: MAX_TEXT_FIELD - len(self._text)]

    def _part_end(self) -> None:
        if self._metering:
            self._metering, self._audio_done = False, True
        if not self._file:
            self.on_field(self._name, self._text.decode("utf-8", "replace"), self.files)
