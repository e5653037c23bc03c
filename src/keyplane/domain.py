"""What the control plane and the features refuse, said without HTTP.

The domain (keyplane.control, the features' services: access, billing, guard) raises these; each edge
maps them once: the admin API to the OpenAI error body (:func:`api_error`, in the admin app's
exception handler), the CLI to a message and a non-zero exit (:func:`cli_message`, where the CLI
turns an error into ``error: ...``), the dashboard to its error page (keyplane.web.base.Refused).

``message``, ``param`` and ``code`` are those of the OpenAI error body; the class says which kind of
refusal it is (and so the HTTP status the admin API answers with).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keyplane.errors import APIError


class DomainError(Exception):
    """A request the domain refuses; subclasses say why."""

    __slots__ = ("code", "message", "param")

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class Invalid(DomainError):
    """The input is malformed or not allowed in the object's present state (400)."""


class NotFound(DomainError):
    """No such object (404)."""


class Conflict(DomainError):
    """The change clashes with what exists (409)."""


class Forbidden(DomainError):
    """The caller may not do this (403)."""


# The HTTP status of each kind: the one table the admin API (and the dashboard's error page) answer from.
STATUS: dict[type[DomainError], int] = {Invalid: 400, Forbidden: 403, NotFound: 404, Conflict: 409}


def status_of(e: DomainError) -> int:
    for cls in type(e).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 400


def api_error(e: DomainError) -> APIError:
    """The OpenAI-shaped error the admin API answers ``e`` with (type ``invalid_request_error``)."""
    from keyplane.errors import APIError

    return APIError(status_of(e), e.message, code=e.code, param=e.param)


def cli_message(e: DomainError) -> str:
    """What the CLI prints after ``error:`` before it exits non-zero."""
    return e.message
