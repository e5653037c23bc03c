"""What a realtime session may do (proxy/realtime_session.py): the client events keyplane refuses, and the
changes that end a session.

A client event keyplane cannot govern (another model, a transcription session, the beta API's spellings that
would not be pinned to the reservation) is refused with an error event; the session goes on. A session ends
when its key or project stops being allowed (:func:`ended`), or the model is taken from it
(:func:`model_refused`); a stale snapshot refuses responses until it is fresh again (:func:`stale`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from keyplane import errors
from keyplane.proxy import authority, client_secrets
from keyplane.proxy.context import RequestContext

if TYPE_CHECKING:
    from keyplane.proxy.realtime_session import Session
    from keyplane.runtime import Runtime

PATH: Final = "/v1/realtime"
SCOPE: Final = "api.model.request"
OVERDUE_FRACTION: Final = 0.8  # of reservation_ttl_seconds: a response not done by then ends its session


def event_refusal(ev: dict[str, Any], model: str) -> errors.APIError | None:
    """A client event keyplane cannot govern, whatever its shape (GA or beta field names)."""
    kind = ev["type"]
    if kind.startswith("transcription_session."):
        return errors.invalid_value(
            "type",
            "Transcription sessions are billed per audio minute, which keyplane "
            "does not meter yet, so they are refused.",
        )
    if kind == "session.update":
        sess = ev.get("session")
        if not isinstance(sess, dict):
            return errors.invalid_value("session", "'session' must be an object.")
        return session_refusal(sess, model)
    return None


def session_refusal(sess: dict[str, Any], model: str) -> errors.APIError | None:
    """A session.update keyplane cannot govern: another model (authorized and priced at connect only),
    or input transcription (billed apart by the provider, not metered here yet)."""
    asked = sess.get("model")
    if asked is not None and asked != model:
        return errors.invalid_value(
            "session.model",
            f"This session is for `{model}`: a realtime session "
            "cannot change its model through keyplane (open a new one).",
        )
    if sess.get("type", "realtime") != "realtime":
        return errors.invalid_value(
            "session.type",
            "keyplane relays realtime sessions only (`type: realtime`): transcription sessions are not metered yet.",
        )
    for beta in ("max_response_output_tokens", "input_audio_transcription"):  # the beta API's spellings
        if beta in sess:
            return errors.invalid_value(
                f"session.{beta}",
                f"`session.{beta}` (the beta Realtime API) is not "
                "accepted through keyplane: use `max_output_tokens`; input audio "
                "transcription is not metered yet.",
            )
    audio = sess.get("audio")
    inp = audio.get("input") if isinstance(audio, dict) else None
    if isinstance(inp, dict) and inp.get("transcription") is not None:
        return errors.invalid_value(
            "session.audio.input.transcription",
            "Input audio transcription in a realtime session is not metered by keyplane yet, so it is refused.",
        )
    return None


def response_refusal(resp: dict[str, Any], model: str) -> errors.APIError | None:
    """A response.create whose output keyplane could not bound or whose model it did not authorize."""
    if "max_response_output_tokens" in resp:  # the beta spelling: it would not be pinned to the reservation
        return errors.invalid_value(
            "response.max_response_output_tokens",
            "`max_response_output_tokens` (the "
            "beta Realtime API) is not accepted through keyplane: use "
            "`max_output_tokens`.",
        )
    asked = resp.get("model")
    if asked is not None and asked != model:
        return errors.invalid_value(
            "response.model",
            f"This session is for `{model}`: a response cannot use another model through keyplane.",
        )
    return None


def ended(s: Session) -> errors.APIError | None:
    """Why the session must end now: its key revoked, suspended, deleted or expired, its project archived,
    its key's federation rule or provider disabled (a workload identity's), an IP allowlist that now
    leaves its address out, or the key no longer allowed the model scope. The key's current entry is what
    admits the next response (its limits, permissions)."""
    cut = authority.ended(s.proxy.rt, RequestContext("", s.entry, s.entry.project_id, PATH))
    if cut is not None:
        return cut
    if (access := s.rt.features.access) is not None:  # an IP allowlist set since the session opened
        try:
            access.check_ip(s.entry.project_id, s.entry.id, s.scope.get("client"), s.scope["headers"])
        except errors.APIError as e:
            return e
    if overdue(s):
        return errors.upstream_timeout(s.upstream_name)
    now_key = s.rt.snapshot.keys_by_id.get(s.entry.id)
    if now_key is not None:
        s.entry = now_key
    if s.entry.expires_at is not None:
        why = s.entry.inactive_reason(s.rt.clock.now())
        if why:
            return errors.key_inactive(s.entry.redacted_value, why)
    why = client_secrets.workload_ended(s.rt, s.entry.id, s.generation)
    if why:
        return errors.key_inactive(s.entry.redacted_value, why)
    if not s.entry.permissions.allows(SCOPE):
        return errors.missing_scope(SCOPE)
    return None


def overdue(s: Session) -> bool:
    """A response admitted longer ago than its reservation is sure to hold (the limiter drops a reservation
    never settled after ``reservation_ttl_seconds``): the session ends and it is settled now, at what it
    reserved, before the budget it holds could be handed to other requests."""
    ttl = getattr(s.rt.settings, "reservation_ttl_seconds", 900.0)
    started = [c.started for c in (*s.live.values(), *s.pending)]
    return bool(started) and time.perf_counter() - min(started) > ttl * OVERDUE_FRACTION


def stale(rt: Runtime) -> errors.APIError | None:
    """Refused while this instance cannot confirm its keys are current (a revocation may not have arrived)."""
    snap, bound = rt.snapshot, rt.settings.max_staleness_seconds
    return None if snap.is_fresh(bound) else errors.stale_authority(snap.staleness())


def model_refused(s: Session) -> errors.APIError | None:
    """The key's model permissions (keyplane.access) as they are now: a model taken away ends the session."""
    access = s.rt.features.access
    if access is None:
        return None
    try:
        access.check_request(s.entry.project_id, s.entry.id, PATH, "GET", s.model, False, b"", False)
    except errors.APIError as e:
        return e
    return None
