"""The fake upstream's provider objects: files (multipart upload), batches, deleting stored responses.

Just enough of OpenAI's object endpoints for the tenancy tests (keyplane.proxy.tenancy): the fake
itself keeps no notion of projects, like a provider key shared by every project.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

_FILE_NAME = re.compile(rb'name="file"; filename="([^"]*)"')
_PURPOSE = re.compile(rb'name="purpose"\r\n\r\n([^\r]*)\r\n')


class FakeObjects:
    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, Any] | None:
        """(status, JSON answer) for an object path, or None when the path is not one of these."""
        parts = path.split("/")[2:]  # /v1/<coll>/<id>/<sub>
        if not parts or (parts[0] not in ("files", "batches") and not (parts[0] == "responses" and len(parts) > 1)):
            return None
        coll, oid, sub = parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None
        if coll == "responses":  # any id: keyplane decides who may delete one (GET streams it: fake_upstream)
            return (200, {"id": oid, "object": "response", "deleted": True}) if method == "DELETE" else None
        store = self.files if coll == "files" else self.batches
        if oid is None:
            if method == "GET":
                data = sorted(store.values(), key=lambda o: o["created_at"], reverse=True)
                return 200, {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None, "has_more": False}
            if method == "POST":
                obj = self._file(body) if coll == "files" else self._batch(body)
                if coll == "batches":  # its output, made by the provider
                    out = self._file(b"")
                    out["id"], out["purpose"] = obj["output_file_id"], "batch_output"
                    self.files[out["id"]] = out
                store[obj["id"]] = obj
                return 200, obj
            return None
        found = store.get(oid)
        if found is None:
            return 404, {"error": {"message": f"No such object: {oid}", "type": "invalid_request_error",
                                   "param": "id", "code": None}}
        obj = found
        if method == "DELETE":
            del store[oid]
            return 200, {"id": oid, "object": obj["object"], "deleted": True}
        if sub == "cancel":
            obj["status"] = "cancelled"
        elif sub == "content":
            return 200, {"content": f"the content of {oid}"}
        return 200, obj

    def _file(self, body: bytes) -> dict[str, Any]:
        n = next(self._ids)
        name = _FILE_NAME.search(body)
        purpose = _PURPOSE.search(body)
        return {"id": f"file-fake{n:08d}", "object": "file", "bytes": len(body),
                "created_at": int(time.time()) * 1000 + n,
                "filename": name.group(1).decode() if name else "upload", "status": "processed",
                "purpose": purpose.group(1).decode() if purpose else "batch"}

    def _batch(self, body: bytes) -> dict[str, Any]:
        import orjson

        n = next(self._ids)
        req = orjson.loads(body) if body else {}
        return {"id": f"batch_fake{n:08d}", "object": "batch", "endpoint": req.get("endpoint"),
                "input_file_id": req.get("input_file_id"), "completion_window": req.get("completion_window", "24h"),
                "status": "completed", "output_file_id": f"file-out{n:08d}", "error_file_id": None,
                "created_at": int(time.time()) * 1000 + n, "metadata": req.get("metadata")}
