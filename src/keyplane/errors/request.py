"""What is wrong with the request itself: 400, 404, 405, 409, 413, 431 and 499 errors.

Built on :class:`keyplane.errors.base.APIError`; import them through ``keyplane.errors``.
"""

from __future__ import annotations

from keyplane.errors.base import APIError

# --- malformed or invalid (400, 413, 431) ----------------------------------------------------


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def invalid_value(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def invalid_json() -> APIError:
    return APIError(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
        "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
    )


def not_a_json_object() -> APIError:
    return APIError(400, "The request body must be a JSON object.", code="invalid_body")


def missing_model() -> APIError:
    return APIError(
        400,
        "you must provide a model parameter",
        param="model",
        code="missing_required_parameter",
    )


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"Request body too large: the limit is {limit} bytes (setting max_body_bytes).",
        code="request_too_large",
    )


def headers_too_large(count: int, size: int) -> APIError:
    return APIError(
        431,
        f"Request headers too large: keyplane accepts at most {count} headers and {size // 1024} KiB of them.",
        code="headers_too_large",
    )


# --- no such thing (404, 405) ----------------------------------------------------------------


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def object_not_found(noun: str, object_id: str, param: str | None = None) -> APIError:
    """A provider object another project owns, or one not created through keyplane (docs/proxy.md)."""
    return APIError(404, f"No such {noun} object: {object_id}", param=param, code="object_not_found")


def unknown_url(method: str, path: str, hint: str = "") -> APIError:
    return APIError(
        404,
        f"Invalid URL ({method} {path}){hint}",
        code="unknown_url",
    )


def path_not_proxied(method: str, path: str) -> APIError:
    return APIError(
        404,
        f"Invalid URL ({method} {path}): keyplane forwards only the /v1 areas a key's permissions can name "
        "(models, responses, assistants, threads, files, fine_tuning, batches, vector_stores, evals).",
        code="unknown_url",
    )


def method_not_allowed(method: str, path: str) -> APIError:
    return APIError(405, f"Method {method} not allowed for {path}", code="method_not_allowed")


# --- conflicts and abandoned requests (409, 499) ---------------------------------------------


def conflict(message: str, code: str | None = None) -> APIError:
    return APIError(409, message, code=code)


def client_closed() -> APIError:
    """The client went away while its upload was streaming to the upstream (nginx's 499; nobody reads it)."""
    return APIError(499, "The client closed the connection before its request body was sent.", code="client_closed")
