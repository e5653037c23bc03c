"""Test helpers: credentials built at run time (no realistic literal is ever committed), real git
repositories in temporary folders, and the CLI."""

from __future__ import annotations

import os
import secrets
import string
import subprocess
from collections.abc import Callable
from pathlib import Path

import typer
from typer.testing import CliRunner, Result

from keyplane import keys
from keyplane.scan.cli import register
from keyplane.scan.rules import generic_secret_plausible

B62 = string.ascii_letters + string.digits
B64U = B62 + "-_"
UPPER32 = string.ascii_uppercase + "234567"


def rnd(n: int, alphabet: str = B62) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _b64u(n: int) -> str:
    # Inner characters may be - or _, the ends are alphanumeric (as the boundaries expect).
    return rnd(1) + rnd(n - 2, B64U) + rnd(1) if n > 2 else rnd(n)


def openai_project() -> str:
    return "sk-proj-" + _b64u(74) + "T3BlbkFJ" + _b64u(74)


def openai_legacy() -> str:
    return "sk-" + rnd(20) + "T3BlbkFJ" + rnd(20)


# One generator per rule id: what a real credential of that kind looks like.
SAMPLES: dict[str, Callable[[], str]] = {
    "keyplane-key": lambda: keys.generate(secrets.choice(keys.KINDS)),
    "openai-project-key": openai_project,
    "openai-service-account-key": lambda: "sk-svcacct-" + _b64u(74) + "T3BlbkFJ" + _b64u(74),
    "openai-admin-key": lambda: "sk-admin-" + _b64u(58) + "T3BlbkFJ" + _b64u(58),
    "openai-legacy-key": openai_legacy,
    "openai-key": lambda: "sk-None-" + _b64u(40) + "T3BlbkFJ" + _b64u(40),
    "anthropic-api-key": lambda: "sk-ant-api03-" + _b64u(93) + "AA",
    "openrouter-api-key": lambda: "sk-or-v1-" + rnd(64, "0123456789abcdef"),
    "google-api-key": lambda: "AIza" + rnd(34, B64U) + rnd(1),
    "google-oauth-client-secret": lambda: "GOCSPX-" + rnd(27, B64U) + rnd(1),
    "aws-access-key-id": lambda: "AKIA" + rnd(16, UPPER32),
    "github-token": lambda: "ghp_" + rnd(36),
    "github-fine-grained-pat": lambda: "github_pat_" + rnd(22) + "_" + rnd(59),
    "gitlab-pat": lambda: "glpat-" + rnd(19, B64U) + rnd(1),
    "slack-token": lambda: "xoxb-" + rnd(12, string.digits) + "-" + rnd(13, string.digits) + "-" + rnd(24),
    "slack-app-token": lambda: (
        "xapp-1-A"
        + rnd(10, string.ascii_uppercase + string.digits)
        + "-"
        + rnd(13, string.digits)
        + "-"
        + rnd(64, "0123456789abcdef")
    ),
    "stripe-live-key": lambda: "sk_live_" + rnd(99),
    "stripe-test-key": lambda: "rk_test_" + rnd(24),
    "sendgrid-api-key": lambda: "SG." + _b64u(22) + "." + _b64u(43),
    "huggingface-token": lambda: "hf_" + rnd(34, string.ascii_letters),
    "groq-api-key": lambda: "gsk_" + rnd(52),
    "xai-api-key": lambda: "xai-" + rnd(80),
    "replicate-api-token": lambda: "r8_" + rnd(37),
    "perplexity-api-key": lambda: "pplx-" + rnd(48),
    "npm-token": lambda: "npm_" + rnd(36),
    "pypi-token": lambda: "pypi-AgEIcHlwaS5vcmc" + _b64u(60),
}


def sample_line(rule_id: str) -> tuple[str, str]:
    """(a line of text holding a credential of ``rule_id``, the secret the rule should report)."""
    if rule_id == "aws-secret-access-key":
        secret = rnd(40, B62 + "+/")
        return f"aws_secret_access_key = {secret}", secret
    if rule_id == "slack-webhook-url":
        secret = rnd(24)
        return f'url: "https://hooks.slack.com/services/T{rnd(8, UPPER32)}/B{rnd(8, UPPER32)}/{secret}"', secret
    if rule_id == "private-key":
        body = rnd(64, B62 + "+/")
        return f"-----BEGIN RSA PRIVATE KEY-----\n{body}", f"-----BEGIN RSA PRIVATE KEY-----\n{body}"
    if rule_id == "generic-secret-assignment":
        secret = generic_value()
        return f'DB_PASSWORD = "{secret}"', secret
    secret = SAMPLES[rule_id]()
    return f'value = "{secret}"', secret


def generic_value() -> str:
    """A random value the generic rule reports (drawn again in the rare case a draw spells a
    placeholder word such as "todo", so that tests never flake)."""
    while True:
        value = rnd(30) + "7"
        if generic_secret_plausible(value.encode()):
            return value


def near_miss_keyplane() -> str:
    """A well-formed keyplane key whose checksum is wrong by one character."""
    key = keys.generate("proj")
    last = key[-1]
    return key[:-1] + ("A" if last != "A" else "B")


class Repo:
    """A git repository in a temporary folder, driven by the real git."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout.strip()

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_bytes(content.encode())
        else:
            path.write_bytes(content)
        return path

    def commit(self, message: str, **files: str | bytes) -> str:
        for name, content in files.items():
            self.write(name.replace("__", "/"), content)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


def git_env() -> dict[str, str]:
    """Environment isolating git from the machine's configuration."""
    return {
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }


def cli(*args: str, input: bytes | str | None = None, env: dict[str, str] | None = None) -> Result:
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, list(args), input=input, env=env)
