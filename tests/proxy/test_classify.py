"""canonical.classify keeps what it found for the hot paths: the same Endpoint as classifying afresh, for every
method and path, asked once or many times; a refused method is never kept; the memory it keeps is bounded."""

from __future__ import annotations

import pytest

from keyplane import errors
from keyplane.proxy import canonical

PATHS = [
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/ft:gpt-4o-mini:org::abc",
    "/v1/files",
    "/v1/files/file-abc/content",
    "/v1/batches",
    "/v1/images/generations",
    "/v1/audio/transcriptions",
    "/v1/vector_stores/vs_1/files",
    "/v1/threads/thread_1/runs",
    "/v1/organization/api_keys",
    "/v1/nothing-here",
]


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "DELETE", "OPTIONS"])
def test_kept_answers_are_fresh_answers(method: str) -> None:
    for path in PATHS:
        fresh = canonical._classify(method, path)
        assert canonical.classify(method, path) == fresh
        assert canonical.classify(method, path) == fresh  # the kept one


def test_a_refused_method_is_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(errors.APIError) as e:
            canonical.classify("PROPFIND", "/v1/chat/completions")
        assert e.value.status == 405
    assert ("PROPFIND", "/v1/chat/completions") not in canonical._classified


def test_bounded() -> None:
    for i in range(5000):
        path = f"/v1/files/file-{i}"
        assert canonical.classify("GET", path) == canonical._classify("GET", path)
    assert len(canonical._classified) <= 4096
