"""The fake upstream's long-running jobs: fine-tuning jobs, evals and their runs (fake_objects.py answers them).

Just enough of OpenAI's API for the tests of the background poll that cancels the jobs and runs of a stopped key
(keyplane.billing.job_poll): create, retrieve and cancel, as the official SDK calls them. A job starts
``validating_files`` and a run ``queued``, and stays so: a test moves one on by setting its ``status``
(``fine_tuning[id]["status"] = "succeeded"``). Cancelling a finished one answers 400, as the provider does.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson

# What the provider answers: (status, JSON body).
Answer = tuple[int, dict[str, Any]]
_JOB_ENDED = frozenset({"succeeded", "failed", "cancelled"})
_RUN_ENDED = frozenset({"completed", "failed", "canceled"})


def _error(status: int, message: str) -> Answer:
    return status, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


def _list(items: list[dict[str, Any]]) -> Answer:
    data = sorted(items, key=lambda o: o["created_at"], reverse=True)
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return 200, {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": False}


class FakeJobs:
    def __init__(self) -> None:
        self.fine_tuning: dict[str, dict[str, Any]] = {}  # fine-tuning jobs, by id
        self.evals: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}  # eval runs, by id (each names its eval_id)
        self._ids = itertools.count(1)

    def answer(self, method: str, parts: list[str], body: bytes) -> Answer | None:
        """The answer to ``/v1/fine_tuning/jobs...`` or ``/v1/evals...`` (``parts``: the path's segments after
        /v1), or None when the path is not one of these."""
        if parts[:2] == ["fine_tuning", "jobs"]:
            return self._job(method, parts[2:], body)
        if parts[:1] == ["evals"]:
            return self._eval(method, parts[1:], body)
        return None

    def _job(self, method: str, rest: list[str], body: bytes) -> Answer | None:
        if not rest:
            if method == "GET":
                return _list(list(self.fine_tuning.values()))
            if method != "POST":
                return None
            req = orjson.loads(body) if body else {}
            job: dict[str, Any] = {
                "id": f"ftjob-fake{next(self._ids):08d}",
                "object": "fine_tuning.job",
                "created_at": int(time.time()),
                "model": req.get("model"),
                "training_file": req.get("training_file"),
                "validation_file": req.get("validation_file"),
                "status": "validating_files",
                "fine_tuned_model": None,
                "finished_at": None,
                "error": None,
                "hyperparameters": {"n_epochs": "auto"},
                "organization_id": "org-fake",
                "result_files": [],
                "seed": 1,
                "trained_tokens": None,
            }
            self.fine_tuning[job["id"]] = job
            return 200, job
        found = self.fine_tuning.get(rest[0])
        if found is None:
            return _error(404, f"No such fine-tuning job: {rest[0]}")
        if rest[1:] == ["cancel"] and method == "POST":
            return self._cancel(found, _JOB_ENDED, "cancelled")
        return (200, found) if len(rest) == 1 and method == "GET" else None

    def _eval(self, method: str, rest: list[str], body: bytes) -> Answer | None:
        req = orjson.loads(body) if body and method == "POST" else {}
        if not rest:
            if method != "POST":
                return None
            new: dict[str, Any] = {
                "id": f"eval_fake{next(self._ids):08d}",
                "object": "eval",
                "created_at": int(time.time()),
                "name": req.get("name"),
                "data_source_config": req.get("data_source_config"),
                "testing_criteria": req.get("testing_criteria") or [],
                "metadata": req.get("metadata"),
            }
            self.evals[new["id"]] = new
            return 200, new
        ev = self.evals.get(rest[0])
        if ev is None:
            return _error(404, f"No such eval: {rest[0]}")
        if len(rest) == 1:
            return (200, ev) if method == "GET" else None
        if rest[1] != "runs":
            return None
        if len(rest) == 2:
            return self._new_run(ev, req) if method == "POST" else None
        run = self.runs.get(rest[2])
        if run is None or run["eval_id"] != ev["id"]:
            return _error(404, f"No such eval run: {rest[2]}")
        if rest[3:] == ["cancel"] and method == "POST":
            return self._cancel(run, _RUN_ENDED, "canceled")
        return (200, run) if len(rest) == 3 and method == "GET" else None

    def _new_run(self, ev: dict[str, Any], req: dict[str, Any]) -> Answer:
        run: dict[str, Any] = {
            "id": f"evalrun_fake{next(self._ids):08d}",
            "object": "eval.run",
            "eval_id": ev["id"],
            "created_at": int(time.time()),
            "name": req.get("name"),
            "model": (req.get("data_source") or {}).get("model"),
            "data_source": req.get("data_source"),
            "status": "queued",
            "error": None,
            "metadata": req.get("metadata"),
            "per_model_usage": [],
            "per_testing_criteria_results": [],
            "report_url": f"https://fake.invalid/evals/{ev['id']}",
            "result_counts": {"errored": 0, "failed": 0, "passed": 0, "total": 0},
        }
        self.runs[run["id"]] = run
        return 200, run

    @staticmethod
    def _cancel(obj: dict[str, Any], ended: frozenset[str], cancelled: str) -> Answer:
        if obj["status"] in ended:
            return _error(400, f"{obj['id']} has already finished ({obj['status']}): it cannot be cancelled.")
        obj["status"] = cancelled
        return 200, obj
