"""A serving process's memory, set up before the app starts (issue 13: peak RSS <= 150 MB, every feature on).

:func:`prepare` runs first in `keyplane serve` (when the process serves: one worker) and in the ASGI
factory (each worker process). Both steps change where memory goes, never what keyplane does:

- The o200k_base tokenizer is built before the rest of start-up. While it is built, its Python ranks
  (~25 MB) sit beside the Rust tables they are copied into (~45 MB, limits/encodings.py). Built halfway
  through start-up, on top of every module and the store, that transient was the process's peak (173 MB,
  13 MB above where it settles); built first, the memory it frees is reused by the imports that follow.
- glibc's malloc keeps its initial thresholds. By default it raises its mmap threshold to the size of the
  largest mmap'd block freed (up to 32 MB) and its trim threshold to twice that (mallopt(3)): the ranks'
  ~10 MB table, freed at start-up, left every arena free to keep ~20 MB it no longer used, and under
  load the applier's and SQLite's threads did (+5 MB). Fixed at glibc's initial 128 KiB, blocks above it
  are mapped and unmapped on their own and freed memory goes back to the system. At most two arenas
  (MALLOC_ARENA_MAX=2) for the threads (usage applier, aiosqlite, uvloop's resolver): one more MB, the
  threads mostly wait on SQLite or the GIL rather than contend for malloc. What an operator sets (the
  MALLOC_* variables, GLIBC_TUNABLES) stands; other C libraries are left alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# mallopt(3) parameters (malloc.h) and the values set: glibc's initial thresholds, two arenas.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MALLOC_SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, 128 * 1024),
    ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, 128 * 1024),
    ("MALLOC_ARENA_MAX", _M_ARENA_MAX, 2),
)


def prepare() -> None:
    """Before the app is built, in a process that serves: malloc's settings, then the tokenizer."""
    tune_malloc()
    from keyplane.limits import encodings

    encodings.prebuild()


def tune_malloc(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """Apply :data:`MALLOC_SETTINGS` through glibc's mallopt, each unless its variable is set; returns what
    was applied (nothing off glibc, or when GLIBC_TUNABLES is set: the operator tunes malloc there)."""
    env = os.environ if env is None else env
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return {}
    except (ValueError, OSError):  # no such name: not glibc
        return {}
    if "GLIBC_TUNABLES" in env:
        return {}
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return {}
    applied: dict[str, int] = {}
    for var, param, value in MALLOC_SETTINGS:
        if var not in env and mallopt(param, value) == 1:
            applied[var] = value
    return applied
