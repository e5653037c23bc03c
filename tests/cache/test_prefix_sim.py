"""A small run of bench/prefix_sim.py (the router the proxy uses, in simulation): the floors' direction."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SIM = Path(__file__).resolve().parents[2] / "bench" / "prefix_sim.py"


@pytest.fixture(scope="module")
def sim():
    spec = importlib.util.spec_from_file_location("prefix_sim", SIM)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["prefix_sim"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("prefix_sim", None)


def test_the_simulation_drives_the_proxy_router(sim):
    from keyplane.cache import affinity

    assert sim.PrefixRouter is affinity.PrefixRouter


def test_small_simulation_keeps_the_floors_direction(sim):
    res = sim.run(n=600, seed=3, workloads=("shared", "hot"))
    shared = res["shared"]
    kp, rr = shared[sim.Keyplane.name], shared[sim.RoundRobin.name]
    assert kp.hit_rate > 2 * rr.hit_rate, (kp.hit_rate, rr.hit_rate)
    assert kp.ttft_p50 < rr.ttft_p50
    assert res["hot"][sim.Keyplane.name].load_ratio <= 1.5
