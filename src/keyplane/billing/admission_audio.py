"""Admission of a large audio upload priced by its length (issue 17): measured first where money controls apply.

A transcription or translation priced per minute (whisper-1) is a bound only when keyplane measured its file
(billing/audio_length.py) before the call. A large upload whose ``model`` came before the file (the official
Python SDK's order) would stream upstream unread (proxy/uploads.py), its price only an estimate, which
admission refuses where a spend limit or enforced credit applies (``403 cost_not_bounded``). So, there and
only there, the rest of such an upload is spooled first (the private, nameless temporary file image edits
use, counted against ``max_body_bytes``), its file measured as it is read, and the request is then admitted
by its length and sent from the spool. Where no money control applies it keeps streaming (no added
latency); so does audio of a token-priced model (bounded by its tokens), and a file whose first bytes or
name already say keyplane cannot measure it (the spool would not make it a bound: it is refused unread).

Every other request goes straight to :meth:`Admission.admit` (this class adds no frame to its await chain).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from keyplane.billing.admission import Admission
from keyplane.billing.quote_media import priced_by_length
from keyplane.billing.ratelimits import limits_model

if TYPE_CHECKING:
    from keyplane.proxy.context import RequestContext
    from keyplane.proxy.uploads import Upload


class MeasuringAdmission(Admission):
    def admit(self, ctx: RequestContext) -> Coroutine[Any, Any, None]:
        up = ctx.upload
        if up is not None and up.measurable and ctx.model and ctx.spending:
            return self._measured(ctx, up, ctx.model)
        return super().admit(ctx)

    async def _measured(self, ctx: RequestContext, up: Upload, model: str) -> None:
        if self.b.behind():  # whether a money control applies, as the limits are now (Admission.admit)
            await self.b.current()
        if priced_by_length(self.b.prices, model) and self.controlled(ctx, model):
            await up.spool_measured()  # raises the upload's 413, 400 or 499 when it is cut
        await super().admit(ctx)

    def controlled(self, ctx: RequestContext, model: str) -> bool:
        """A spend limit or enforced credit applies to the request (as :meth:`Admission.admit` decides it)."""
        b = self.b
        now = self.clock.now()
        if now >= b.period_end:
            b.rollover(now)
        key = ctx.key
        plan = b.plan(key, limits_model(b, key.id, key.project_id or "", model))
        return plan.controlled
