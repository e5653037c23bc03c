"""The fake provider's usage and costs reports (keyplane.testing.fake_provider):
``/organization/usage/<kind>`` (hourly buckets of the fake's usage rows) and ``/organization/costs``
(daily buckets), with page paging (``page``/``next_page``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from keyplane.testing.fake_admin_api import FakeAdminApi

USAGE_KINDS = (
    "completions",
    "embeddings",
    "moderations",
    "images",
    "audio_speeches",
    "audio_transcriptions",
    "vector_stores",
    "code_interpreter_sessions",
    "file_search_calls",
    "web_search_calls",
)


class FakeUsageApi(FakeAdminApi):
    """The usage and costs handlers, behind the Admin API's gate (routed by FakeProvider.app)."""

    def _window(self, request: Request, width: int) -> tuple[list[int], int]:
        q = request.query_params
        start = int(q["start_time"]) // width * width
        end = int(q.get("end_time", start + 7 * width))
        page = int(q.get("page") or 0)
        starts = list(range(start, end, width))
        return starts, page

    def _paged(self, starts: list[int], page: int, results: Any, width: int) -> Response:
        chunk = starts[page * self.page_size * 4 : (page + 1) * self.page_size * 4]
        more = (page + 1) * self.page_size * 4 < len(starts)
        data = [{"object": "bucket", "start_time": t, "end_time": t + width, "results": results(t)} for t in chunk]
        return JSONResponse(
            {"object": "page", "data": data, "has_more": more, "next_page": str(page + 1) if more else None}
        )

    async def _usage(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        kind = request.path_params["kind"]
        if kind not in USAGE_KINDS:
            return JSONResponse(
                {"error": {"message": "unknown", "type": "invalid_request_error", "param": None, "code": None}}, 404
            )
        starts, page = self._window(request, 3600)

        def results(t: int) -> list[dict[str, Any]]:
            if kind != "completions":
                return []
            return [
                {
                    "object": "organization.usage.completions.result",
                    "input_tokens": b.input_tokens,
                    "output_tokens": b.output_tokens,
                    "input_cached_tokens": 0,
                    "num_model_requests": b.requests,
                    "project_id": b.project_id,
                    "api_key_id": b.api_key_id,
                    "model": b.model,
                    "user_id": None,
                    "batch": None,
                }
                for b in self.usage
                if b.start_time == t
            ]

        return self._paged(starts, page, results, 3600)

    async def _costs(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        starts, page = self._window(request, 86400)

        def results(t: int) -> list[dict[str, Any]]:
            return [
                {
                    "object": "organization.costs.result",
                    "amount": {"value": c["value"], "currency": "usd"},
                    "line_item": None,
                    "project_id": c["project_id"],
                }
                for c in self.costs
                if c["start_time"] == t
            ]

        return self._paged(starts, page, results, 86400)
