"""The usage a realtime response reports, and the output a response may write (proxy/realtime_session.py).

A ``response.done`` reports its usage by modality (text and audio input, cached, output): each is billed at
its own rate of the price table (billing/prices.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keyplane.billing.price import Tokens

if TYPE_CHECKING:
    from keyplane.runtime import Runtime


def output_cap(rt: Runtime, model: str) -> int | None:
    """The output a response of ``model`` may write: the price table's max_output (billing's default
    without one); None without billing."""
    billing = rt.features.billing
    if billing is None:
        return None
    price = billing.prices.lookup(model)
    cap = price.max_output if price is not None else None
    return cap or billing.default_max_tokens


def usage_tokens(usage: dict[str, Any]) -> Tokens:
    """A response.done usage by modality: ``input_token_details`` (text, audio, image, cached, and
    ``cached_tokens_details`` by modality) and ``output_token_details`` (text, audio). The totals stand for
    what the details do not attribute (image input, details missing), which is billed at the dearest rates."""
    d = _dict(usage.get("input_token_details"))
    text, audio = _int(d.get("text_tokens")), _int(d.get("audio_tokens"))
    prompt = max(_int(usage.get("input_tokens")), text + audio)
    cached = min(_int(d.get("cached_tokens")), prompt)
    cd = _dict(d.get("cached_tokens_details"))
    c_audio = min(_int(cd.get("audio_tokens")), audio, cached)
    c_text = min(_int(cd.get("text_tokens")), text, cached - c_audio)
    o = _dict(usage.get("output_token_details"))
    t_out, a_out = _int(o.get("text_tokens")), _int(o.get("audio_tokens"))
    completion = max(_int(usage.get("output_tokens")), t_out + a_out)
    return Tokens(
        text_in=text,
        audio_in=audio,
        other_in=prompt - text - audio,
        cached_text=c_text,
        cached_audio=c_audio,
        cached_rest=cached - c_text - c_audio,
        text_out=t_out,
        audio_out=a_out,
        other_out=completion - t_out - a_out,
    )


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0
