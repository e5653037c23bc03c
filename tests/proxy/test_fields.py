"""The fields keyplane reads of a request body (proxy/request._checked): the output limit is the largest of the
endpoint's own limit fields and llama.cpp's n_predict, none on an endpoint without one; choices is the larger of
n and best_of; out-of-range values are refused with the field named. Held to a plain restatement of the rule
on generated bodies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane import errors
from keyplane.proxy import request

LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "n_predict")
PATHS = (*request.OUTPUT_FIELDS, "/v1/embeddings", "/v1/images/generations")
value = st.none() | st.integers(min_value=-3, max_value=request.MAX_OUTPUT_TOKENS + 3)
choices = st.none() | st.integers(min_value=-1, max_value=request.MAX_CHOICES + 2)


def expected(path: str, h: request.Head) -> tuple[str | None, int | None, int] | str:
    """(model, output limit, choices), or the name of the field refused."""
    for name in LIMITS:
        v = getattr(h, name)
        if v is not None and not 1 <= v <= request.MAX_OUTPUT_TOKENS:
            return name
    for name in ("n", "best_of"):
        v = getattr(h, name)
        if v is not None and not 1 <= v <= request.MAX_CHOICES:
            return name
    own = request.OUTPUT_FIELDS.get(path)
    named = [] if own is None else [getattr(h, f) for f in (*own, "n_predict") if getattr(h, f) is not None]
    return h.model, max(named) if named else None, max(h.n or 1, h.best_of or 1)


@settings(max_examples=400, deadline=None)
@given(
    path=st.sampled_from(PATHS),
    limits=st.tuples(value, value, value, value),
    n=choices,
    best_of=choices,
    stream=st.none() | st.booleans(),
    include_usage=st.none() | st.booleans(),
)
def test_fields_follow_the_rule(
    path: str,
    limits: tuple[int | None, ...],
    n: int | None,
    best_of: int | None,
    stream: bool | None,
    include_usage: bool | None,
) -> None:
    so = None if include_usage is None else {"include_usage": include_usage}
    h = request.Head(model="m", stream=stream, stream_options=so, n=n, best_of=best_of, **dict(zip(LIMITS, limits)))
    want = expected(path, h)
    if isinstance(want, str):
        with pytest.raises(errors.APIError) as e:
            request._checked(path, h, None)
        assert e.value.param == want
        return
    f = request._checked(path, h, None)
    assert (f.model, f.output_limit, f.choices) == want
    assert f.stream is bool(stream) and f.include_usage is (include_usage is True)
    assert f.context_ref is False and f.form is None


def test_context_reference_and_form() -> None:
    f = request._checked("/v1/responses", request.Head(model="m", previous_response_id="resp_1"), {"a": "b"})
    assert f.context_ref and f.form == {"a": "b"}
    assert request._checked("/v1/responses", request.Head(model="m", conversation={"id": "c"}), None).context_ref
