"""The official OpenAI Node SDK against keyplane (tests/node/client.mjs), streaming and not."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent.parent / "node"

pytestmark = pytest.mark.node


@pytest.fixture(scope="session")
def node_sdk() -> Path:
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        pytest.skip("npm/node are not installed: the Node SDK tests need Node.js 20+ and npm")
    if not (NODE_DIR / "node_modules" / "openai").exists():
        subprocess.run(
            [npm, "install", "--no-package-lock", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return Path(node)


def test_node_sdk(node_sdk, gw, fake):
    res = subprocess.run(
        [str(node_sdk), "client.mjs", gw.v1, gw.api_key], cwd=NODE_DIR, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["chat"] == "Hello from the fake upstream." and out["chatUsage"] == 5
    assert out["requestId"].startswith("req_") and out["processingMs"] is not None
    assert out["stream"] == "Hello from the fake upstream." and out["strippedUsageChunks"] == 0
    assert out["streamUsage"] == 5
    assert out["embeddingLength"] == 8
    assert out["responses"] == "Hello from the fake upstream."
    assert out["responsesLastEvent"] == "response.completed"
    assert "demo-echo" in out["models"] and "gpt-4o-mini" in out["models"]
    assert out["notFound"] == {"status": 404, "code": "model_not_found", "name": "NotFoundError"}
    assert out["badKey"]["status"] == 401 and out["badKey"]["name"] == "AuthenticationError"
    assert out["midStream"]["name"] == "APIError" and "closed the stream" in out["midStream"]["message"]
