"""A plain git pre-commit hook, for repositories that do not use the pre-commit framework."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Final

from keyplane.scan import git
from keyplane.scan.findings import ScanError

HOOK_MARKER: Final = "# keyplane-scan pre-commit hook"


def hook_script(extra_args: list[str]) -> str:
    """Runs the scanner of the Python that installed it; falls back to ``keyplane`` on PATH."""
    args = " ".join(shlex.quote(a) for a in ["--staged", *extra_args])
    python = shlex.quote(sys.executable)
    return (
        "#!/bin/sh\n"
        f"{HOOK_MARKER} (written by `keyplane scan --install-hook`; rewrite it the same way)\n"
        "# Blocks a commit that adds a secret. Bypass once, knowingly: git commit --no-verify\n"
        f"if [ -x {python} ]; then\n"
        f"    exec {python} -m keyplane.scan {args}\n"
        "fi\n"
        f"exec keyplane scan {args}\n"
    )


def install_hook(repo: Path, force: bool, extra_args: list[str]) -> Path:
    """Writes the hook; refuses to replace a hook keyplane did not write unless ``force``."""
    git.require_repository(repo)
    path = git.install_hook_path(repo)
    if path.exists():
        try:
            current = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ScanError(f"cannot read the existing hook {path}: {exc.strerror}") from None
        if HOOK_MARKER not in current and not force:
            raise ScanError(
                f"{path} already exists and was not written by keyplane; "
                "add `keyplane scan --staged` to it yourself, or pass --force to replace it"
            )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(hook_script(extra_args), encoding="utf-8")
        # A hook is a program git runs: rwxr-xr-x, as git's own sample hooks.
        os.chmod(path, 0o755)  # noqa: S103
    except OSError as exc:
        raise ScanError(f"cannot write the hook {path}: {exc.strerror}") from None
    return path
