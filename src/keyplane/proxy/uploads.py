"""Multipart uploads streamed to the upstream instead of held in memory whole (audio, images, files).

The proxy reads the text fields it needs from the parts before the first file (:func:`begin`, before admission),
then the rest of the body goes upstream as it arrives (:meth:`Upload.iterate`), read by the strict streaming
parser (proxy/multipart_stream.py) and counted against ``max_body_bytes`` as it goes. Only bodies larger than
STREAM_ABOVE (by their Content-Length; chunked ones always) take this path; smaller ones are read whole as
before, and JSON requests never come here. What each endpoint does once the first file part begins:

- audio transcriptions and translations: streamed when ``model`` came first (the official SDKs send the text
  fields first); priced per minute from the upload's size (its Content-Length, or ``max_body_bytes`` when
  chunked, settled on the size received), an estimate refused under money controls: the file's length is not
  known before it went upstream. A text field after the file that names ``model`` again is refused. Spooled
  audio (below) is read whole first: its file part is measured as it is read (billing/audio_length.py), and a
  WAV, MP3, FLAC, M4A, Ogg or WebM file is priced by its length, a bound (measured in a thread: an M4A's AAC blocks
  are read in Python, about 0.5 s of CPU per MB). Where money controls apply and the model is priced by the
  minute, admission spools a streaming audio upload before it quotes it (:meth:`Upload.spool_measured`,
  billing/admission_audio.py): it is then measured and sent like one whose ``model`` came last.
- image edits and variations, and audio whose ``model`` comes after the file: *spooled*, the rest of the body
  written to a private temporary file (created 0600 and unlinked at once, tempfile.TemporaryFile) while it is
  parsed, so every field (model, n, size, quality, prompt) and the number of images are known before admission
  prices them; then sent upstream from that file. Memory holds one chunk, never the body.
- file uploads (``/v1/files``): streamed when ``purpose`` came first and is not ``batch``; a batch input file
  (or an upload whose purpose comes after the file) is read whole as before, since keyplane prices and checks
  its requests (billing/batches.py, proxy/tenancy.py).
- the parts of an Uploads API upload (``/v1/uploads/{id}/parts``, up to 64 MB each): streamed. keyplane reads
  nothing of them: the file a completed upload makes is recorded unchecked when its purpose is batch, and no
  batch may run it (proxy/owners.py derived_rows).

Any violation while streaming (the size bound, a malformed body, a field that comes too late, the client going
away) cuts the upload: the generator raises, aiohttp drops the upstream connection before the body is complete
(the provider runs nothing), and the forwarder answers the recorded error (413, 400) instead of retrying
(proxy/forward.py). An upload that reached the provider whole is never sent again: if its answer fails, it is
billed at its estimate (ctx.upstream_received).
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import AsyncIterator
from typing import IO, Any, Final

from keyplane import errors
from keyplane.proxy import multipart, request
from keyplane.proxy.multipart import Form
from keyplane.proxy.multipart_stream import Parser
from keyplane.proxy.request import ClientGone, Fields

STREAMED: Final = frozenset(
    {"/v1/audio/transcriptions", "/v1/audio/translations", "/v1/images/edits", "/v1/images/variations", "/v1/files"}
)
_PARTS: Final = re.compile(r"/v1/uploads/[^/]+/parts")
STREAM_ABOVE: Final = 1024 * 1024  # bodies declared at most this large are read whole (and can be retried)
_AUDIO: Final = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})
_SPOOL_CHUNK: Final = 256 * 1024


def streamed(path: str) -> bool:
    """A POST to ``path`` is an upload that streams when large (the canonical path)."""
    return path in STREAMED or (path.startswith("/v1/uploads/") and _PARTS.fullmatch(path) is not None)


class _Cut(Exception):
    """The upload was cut (``Upload.error`` says why)."""


class Upload:
    """One multipart body on its way upstream."""

    def __init__(self, receive: Any, boundary: bytes, limit: int, declared: int | None, path: str) -> None:
        self._receive = receive
        self.limit = limit
        self.declared = declared  # Content-Length, if the client sent one
        self.path = path
        self.parser = Parser(boundary, self._field, audio=path in _AUDIO)  # measures the audio file part
        self.form = Form()
        self.fields: Fields | None = None
        self.head = b""  # what was read before admission: text fields and the start of the first file
        self.size = 0  # bytes received so far
        self.more = True  # the client has more to send
        self.spool: IO[bytes] | None = None  # the rest of the body, when spooled
        self.sent = False  # bytes went upstream: it cannot be sent again
        self.finished = False  # all of it went upstream
        self.error: errors.APIError | None = None
        self._done = asyncio.Event()
        self._gone = False
        # Fields refused after a file part once the body streams: what admission priced or decided on.
        self.late: frozenset[str] = frozenset()

    @property
    def streaming(self) -> bool:
        return self.spool is None

    @property
    def files(self) -> int:
        return self.parser.files

    @property
    def measurable(self) -> bool:
        """Audio still streaming in, nothing sent yet, whose file may yet be measured (:meth:`spool_measured`):
        its one file part, named ``file``, is being read, and its first bytes do not already rule it out."""
        return self.spool is None and self.more and not self.sent and self.parser.measuring

    @property
    def estimate_bytes(self) -> int:
        """The size admission prices (audio minutes): known when spooled or declared, else the bound."""
        if not self.more or self.spool is not None:
            return self.size
        return self.declared if self.declared is not None else self.limit

    # --- reading ---------------------------------------------------------------------------------

    def _field(self, name: str, value: str, files_before: int) -> None:
        if name in self.form:
            raise multipart._refuse(f"the field `{name}` is given twice")
        if files_before and name in self.late:
            raise multipart._refuse(
                f"the field `{name}` comes after a file part; keyplane streams large uploads and reads "
                f"`{name}` before the files: send the text fields first (as the official SDKs do)"
            )
        self.form[name] = value

    async def _read(self) -> bytes:
        msg = await self._receive()
        if msg["type"] == "http.disconnect":
            self._gone = True
            self._cut(errors.client_closed())
        chunk: bytes = msg.get("body", b"")
        self.more = bool(msg.get("more_body"))
        self.size += len(chunk)
        if self.size > self.limit:
            self._cut(errors.too_large(self.limit))
        try:
            if self.parser.measuring_audio:  # in a thread: measuring may cost 0.5 s of CPU per MB (an MP4)
                await asyncio.to_thread(self._feed, chunk)
            else:
                self._feed(chunk)
        except errors.APIError as e:
            self._cut(e)
        if not self.more:
            self._done.set()
        return chunk

    def _feed(self, chunk: bytes) -> None:
        self.parser.feed(chunk)
        if not self.more:
            self.parser.end()

    def _cut(self, err: errors.APIError) -> None:
        self.error = err
        self._done.set()
        raise _Cut

    async def _read_head(self) -> None:
        parts: list[bytes] = []
        while self.more and not self.parser.files:
            parts.append(await self._read())
        self.head = b"".join(parts)

    async def _spool_rest(self) -> None:
        """The rest of the body to a private unnamed file, written off the event loop in _SPOOL_CHUNK pieces
        (a slow or full disk stalls this upload, not every request of the process)."""
        spool: IO[bytes] = await asyncio.to_thread(tempfile.TemporaryFile, prefix="keyplane-upload-")
        self.spool = spool  # closed by close()
        buf = bytearray()
        while self.more:
            buf += await self._read()
            if len(buf) >= _SPOOL_CHUNK:
                await asyncio.to_thread(spool.write, bytes(buf))
                buf.clear()
        if buf:
            await asyncio.to_thread(spool.write, bytes(buf))
        await asyncio.to_thread(spool.flush)

    async def spool_measured(self) -> None:
        """Spool the rest of a streaming audio upload before admission (where money controls apply and the model
        is priced by the minute: billing/admission_audio.py), its file measured as it is read, so that it is
        priced by its length; then it is sent from the spool. The upload's own error (413, 400, 499) when cut."""
        try:
            await self._spool_rest()
        except _Cut:
            self.close()
            assert self.error is not None
            raise self.error from None
        except BaseException:
            self.close()
            raise
        self.form.set_audio_length(self.parser.audio_length())

    async def _read_rest(self) -> bytes:
        parts = [self.head]
        while self.more:
            parts.append(await self._read())
        return b"".join(parts)

    # --- sending ---------------------------------------------------------------------------------

    @property
    def replayable(self) -> bool:
        """It can be sent again (nothing of a streamed body went upstream yet, or it is spooled whole)."""
        return not self.sent or (self.spool is not None and not self.spool.closed)

    @property
    def length(self) -> int | None:
        """The Content-Length to send upstream (None: chunked)."""
        return self.size if self.spool is not None else self.declared

    async def iterate(self) -> AsyncIterator[bytes]:
        """The body for the upstream: what was read before admission, then the rest as it comes."""
        self.sent = True
        yield self.head
        if self.spool is not None:
            self.spool.seek(0)
            while chunk := await asyncio.to_thread(self.spool.read, _SPOOL_CHUNK):
                yield chunk
            self.spool.close()  # all of it went upstream: never sent again (deleted: it had no name)
        else:
            self.parser.stop_audio()  # it streams unmeasured: priced by its size
            while self.more:
                chunk = await self._read()  # raises _Cut: aiohttp drops the upstream connection
                if chunk:
                    yield chunk
        self.finished = True

    async def read_all(self) -> bytes:
        """The whole body (the built-in demo upstream only)."""
        return b"".join([c async for c in self.iterate()])

    async def receive_after(self) -> dict[str, Any]:
        """``receive`` for the disconnect watch once the body is read (it must not take body chunks); never
        answers if the client left mid-upload (the forwarder reports that)."""
        await self._done.wait()
        if self._gone:
            await asyncio.Event().wait()
        return dict(await self._receive())

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


async def begin(scope: dict[str, Any], receive: Any, limit: int, path: str) -> tuple[bytes, Upload | None]:
    """(the body read so far, the upload still to stream) of a POST to an upload endpoint; (the whole body,
    None) when it is small, not multipart, compressed, or must be read whole."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    declared: int | None = None
    ctypes: list[bytes] = []
    for k, v in headers:
        if k == b"content-length":
            try:
                declared = int(v)
            except ValueError:
                raise errors.bad_request("Invalid Content-Length header.") from None
            if declared > limit:
                raise errors.too_large(limit)
        elif k == b"content-type":
            ctypes.append(v)
        elif k == b"content-encoding" and v.strip().lower() not in (b"", b"identity"):
            ctypes = []  # request.check_headers refused it already; never stream a compressed body unread
            break
    boundary = _boundary(ctypes)
    if boundary is None or (declared is not None and declared <= STREAM_ABOVE):
        return await request.read_body(scope, receive, limit), None
    up = Upload(receive, boundary, limit, declared, path)
    try:
        await up._read_head()
        if not up.more:  # it all came before any file part
            return up.head, None
        if path in _AUDIO and "model" in up.form:
            up.late = frozenset({"model"})
        elif path == "/v1/files" and "batch" not in up.form.get("purpose", "batch").lower():
            up.late = frozenset({"purpose"})
        elif path == "/v1/files":  # a batch input file is read whole (its requests are priced and checked)
            return await up._read_rest(), None
        elif path not in STREAMED:  # an upload's part: nothing in it is read
            pass
        else:
            await up._spool_rest()
        if not up.more:  # read whole (spooled): measured
            up.form.set_audio_length(up.parser.audio_length())
        elif path not in _AUDIO:  # streams upstream before it is read whole: its length is not known at admission
            up.parser.stop_audio()
        # (streaming audio is measured on if admission spools it: spool_measured; else iterate stops it)
        up.fields = request.form_fields(path, up.form)
        return up.head, up
    except _Cut:
        up.close()
        if up._gone:
            raise ClientGone from None
        assert up.error is not None
        raise up.error from None
    except BaseException:
        up.close()
        raise


def _boundary(ctypes: list[bytes]) -> bytes | None:
    if len(ctypes) != 1:
        return None
    try:
        kind, params = multipart._params(ctypes[0].decode("latin-1"), "Content-Type")
    except errors.APIError:
        return None
    b = params.get("boundary")
    if kind != "multipart/form-data" or b is None or not multipart._BOUNDARY_CHARS.fullmatch(b):
        return None
    return b.encode("latin-1")
