"""The package's module-level import graph has no cycle (scripts/check_imports.py), and the checker finds one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_imports.py"


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_no_import_cycles() -> None:
    assert _checker().main() == 0


def test_a_planted_cycle_is_found() -> None:
    ci = _checker()
    graph = {
        "keyplane.a": {"keyplane.b"},
        "keyplane.b": {"keyplane.c"},
        "keyplane.c": {"keyplane.a"},
        "keyplane.d": {"keyplane.a"},
    }
    cycles = ci.find_cycles(graph)
    assert len(cycles) == 1
    assert set(cycles[0]) >= {"keyplane.a", "keyplane.b", "keyplane.c"}
    assert "keyplane.d" not in cycles[0]
    assert ci.find_cycles({"keyplane.a": {"keyplane.b"}, "keyplane.b": set()}) == []
