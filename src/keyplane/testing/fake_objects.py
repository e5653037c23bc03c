"""The fake upstream's provider objects: files (multipart upload), batches, vector stores (with their
``usage_bytes``), deleting stored responses; fine-tuning jobs, evals and eval runs (fake_jobs.py).

Just enough of OpenAI's object endpoints for the tenancy tests (keyplane.proxy.tenancy) and batch
billing (keyplane.billing.batches): the fake itself keeps no notion of projects, like a provider key
shared by every project. A batch is created with the status ``batch_status`` (default ``completed``;
a test sets ``batches[id]["status"]`` to move it on); its output file's content is one JSONL line per
request of its input file, each answered like the synchronous endpoint (with its ``usage``).
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

from keyplane.testing.fake_jobs import FakeJobs

_FILE_NAME = re.compile(rb'name="file"; filename="([^"]*)"')
_PURPOSE = re.compile(rb'name="purpose"\r\n\r\n([^\r]*)\r\n')
_FILE_CONTENT = re.compile(rb'name="file"; filename="[^"]*"\r\n(?:[^\r\n]+\r\n)*\r\n(.*?)\r\n--', re.S)


_DATA_CONTENT = re.compile(rb'name="data"(?:; filename="[^"]*")?\r\n(?:[^\r\n]+\r\n)*\r\n(.*)\r\n--', re.S)


class FakeObjects:
    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}  # file id -> the uploaded bytes
        self.outputs: dict[str, str] = {}  # output file id -> its batch id
        self.batch_status = "completed"  # the status a new batch starts in
        # Vector stores: created with usage_bytes = store_bytes (a test sets vector_stores[id]["usage_bytes"]).
        self.vector_stores: dict[str, dict[str, Any]] = {}
        self.store_bytes = 0
        self.output_reads = 0  # how many times an output file's content was read
        self.jobs = FakeJobs()  # fine-tuning jobs, evals and their runs
        self.uploads: dict[str, dict[str, Any]] = {}  # the Uploads API: upload id -> the upload
        self.parts: dict[str, bytes] = {}  # part id -> its bytes
        self._ids = itertools.count(1)

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, Any] | None:
        """(status, JSON answer) for an object path, or None when the path is not one of these."""
        parts = path.split("/")[2:]  # /v1/<coll>/<id>/<sub>
        if parts[:1] in (["fine_tuning"], ["evals"]):
            return self.jobs.answer(method, parts, body)
        if parts and parts[0] == "uploads" and method == "POST":
            return self._upload(parts[1:], body)
        if not parts or (
            parts[0] not in ("files", "batches")
            and not (parts[0] == "responses" and len(parts) > 1)
            and not (parts[0] == "vector_stores" and len(parts) <= 2)
        ):
            return None
        coll, oid, sub = parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None
        if coll == "responses":  # any id: keyplane decides who may delete one (GET streams it: fake_upstream)
            if method == "GET" and sub == "input_items":  # one input message per response
                item: dict[str, object] = {"id": f"msg_in_{oid}", "type": "message", "role": "user"}
                item |= {"status": "completed", "content": [{"type": "input_text", "text": "hi"}]}
                return 200, {"object": "list", "data": [item], "first_id": item["id"], "last_id": item["id"]}
            return (200, {"id": oid, "object": "response", "deleted": True}) if method == "DELETE" else None
        if coll == "vector_stores":
            return self._store(method, oid, body)
        store = self.files if coll == "files" else self.batches
        if oid is None:
            if method == "GET":
                data = sorted(store.values(), key=lambda o: o["created_at"], reverse=True)
                return 200, {
                    "object": "list",
                    "data": data,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                    "has_more": False,
                }
            if method == "POST":
                obj = self._file(body) if coll == "files" else self._batch(body)
                if coll == "batches":  # its output, made by the provider
                    out = self._file(b"")
                    out["id"], out["purpose"] = obj["output_file_id"], "batch_output"
                    self.files[out["id"]] = out
                    self.outputs[out["id"]] = obj["id"]
                else:
                    m = _FILE_CONTENT.search(body)
                    self.contents[obj["id"]] = m.group(1) if m else b""
                store[obj["id"]] = obj
                return 200, obj
            return None
        found = store.get(oid)
        if found is None:
            return 404, {
                "error": {
                    "message": f"No such object: {oid}",
                    "type": "invalid_request_error",
                    "param": "id",
                    "code": None,
                }
            }
        obj = found
        if method == "DELETE":
            del store[oid]
            return 200, {"id": oid, "object": obj["object"], "deleted": True}
        if sub == "cancel":
            obj["status"] = "cancelled"
        elif sub == "content":
            if oid in self.outputs:
                self.output_reads += 1
                return 200, self.output(self.outputs[oid])
            return 200, {"content": f"the content of {oid}"}
        return 200, obj

    def _upload(self, rest: list[str], body: bytes) -> tuple[int, Any]:
        """The Uploads API: create, add a part (its ``data`` bytes kept), complete (a file of the parts)."""
        import orjson

        n = next(self._ids)
        if not rest:
            req = orjson.loads(body)
            up = {
                "id": f"upload_fake{n:08d}",
                "object": "upload",
                "bytes": req.get("bytes"),
                "created_at": int(time.time()),
                "expires_at": int(time.time()) + 3600,
                "filename": req.get("filename"),
                "purpose": req.get("purpose"),
                "status": "pending",
                "file": None,
            }
            self.uploads[up["id"]] = up
            return 200, up
        up = self.uploads.get(rest[0])  # type: ignore[assignment]
        if up is None:
            return 404, {"error": {"message": "No such upload", "type": "invalid_request_error", "code": None}}
        if rest[1:] == ["parts"]:
            m = _DATA_CONTENT.search(body)
            pid = f"part_fake{n:08d}"
            self.parts[pid] = m.group(1) if m else b""
            return 200, {"id": pid, "object": "upload.part", "upload_id": up["id"], "created_at": int(time.time())}
        if rest[1:] == ["complete"]:
            ids = orjson.loads(body).get("part_ids") or []
            f = self._file(b"")
            f.update(bytes=sum(len(self.parts.get(i, b"")) for i in ids), filename=up["filename"])
            f["purpose"] = up["purpose"]
            self.files[f["id"]] = f
            self.contents[f["id"]] = b"".join(self.parts.get(i, b"") for i in ids)
            up.update(status="completed", file=f)
            return 200, up
        return 404, {"error": {"message": "Not found", "type": "invalid_request_error", "code": None}}

    def _store(self, method: str, oid: str | None, body: bytes) -> tuple[int, Any] | None:
        import orjson

        if oid is None:
            if method == "GET":
                data = sorted(self.vector_stores.values(), key=lambda o: o["created_at"], reverse=True)
                return 200, {
                    "object": "list",
                    "data": data,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                    "has_more": False,
                }
            req = orjson.loads(body) if body else {}
            n = next(self._ids)
            obj: dict[str, Any] = {
                "id": f"vs_fake{n:08d}",
                "object": "vector_store",
                "created_at": int(time.time()) * 1000 + n,
                "name": req.get("name"),
                "usage_bytes": self.store_bytes,
                "status": "completed",
                "last_active_at": int(time.time()),
                "metadata": req.get("metadata") or {},
                "expires_at": None,
                "file_counts": {"cancelled": 0, "completed": 0, "failed": 0, "in_progress": 0, "total": 0},
            }
            self.vector_stores[obj["id"]] = obj
            return 200, obj
        found = self.vector_stores.get(oid)
        if found is None:
            return 404, {
                "error": {
                    "message": f"No such vector store: {oid}",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        if method == "DELETE":
            del self.vector_stores[oid]
            return 200, {"id": oid, "object": "vector_store.deleted", "deleted": True}
        if method == "POST" and body:
            req = orjson.loads(body)
            if "name" in req:
                found["name"] = req["name"]
        return 200, found

    def _file(self, body: bytes) -> dict[str, Any]:
        n = next(self._ids)
        name = _FILE_NAME.search(body)
        purpose = _PURPOSE.search(body)
        return {
            "id": f"file-fake{n:08d}",
            "object": "file",
            "bytes": len(body),
            "created_at": int(time.time()) * 1000 + n,
            "filename": name.group(1).decode() if name else "upload",
            "status": "processed",
            "purpose": purpose.group(1).decode() if purpose else "batch",
        }

    def _batch(self, body: bytes) -> dict[str, Any]:
        import orjson

        n = next(self._ids)
        req = orjson.loads(body) if body else {}
        return {
            "id": f"batch_fake{n:08d}",
            "object": "batch",
            "endpoint": req.get("endpoint"),
            "input_file_id": req.get("input_file_id"),
            "completion_window": req.get("completion_window", "24h"),
            "status": self.batch_status,
            "output_file_id": f"file-out{n:08d}",
            "error_file_id": None,
            "created_at": int(time.time()) * 1000 + n,
            "metadata": req.get("metadata"),
        }

    def output(self, batch_id: str) -> bytes:
        """The JSONL output of a batch: each request of its input file answered, with its usage."""
        import orjson

        from keyplane.testing import answers, answers_media

        batch = self.batches[batch_id]
        lines = []
        for i, raw in enumerate(self.contents.get(batch.get("input_file_id") or "", b"").splitlines()):
            if not raw.strip():
                continue
            req = orjson.loads(raw)
            body, url, rid = req.get("body") or {}, req.get("url"), f"req_fakebatch{i}"
            if url == "/v1/embeddings":
                answer = answers.embeddings(body)
            elif url == "/v1/responses":  # with a call of each hosted tool it enables, as the synchronous fake
                answer = answers_media.with_tool_calls(
                    answers.response_object(body, answers.DEFAULT_TEXT, 0, rid), body
                )
            elif url == "/v1/completions":
                answer = answers.completion(body, answers.DEFAULT_TEXT, 0, rid)
            else:
                answer = answers.chat(body, answers.DEFAULT_TEXT, 0, rid)
            lines.append(
                orjson.dumps(
                    {
                        "id": f"batch_req_{i}",
                        "custom_id": req.get("custom_id"),
                        "response": {"status_code": 200, "request_id": rid, "body": answer},
                        "error": None,
                    }
                )
            )
        return b"\n".join(lines) + b"\n" if lines else b""
