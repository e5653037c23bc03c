"""The price table: exact integer micro-dollars, glob lookup, cost of a usage."""

from __future__ import annotations

import pytest

from keyplane.billing.prices import Price, PriceError, PriceTable, to_micros
from keyplane.config import ConfigError
from keyplane.config import Price as PriceConfig
from tests.support import make_settings


@pytest.mark.parametrize("value,micros", [(0.15, 150_000), (0.075, 75_000), (2.5, 2_500_000), (0.1, 100_000),
                                          (1e-6, 1), (600, 600_000_000), ("0.30", 300_000), (0.000001, 1)])
def test_exact_micros(value, micros):
    assert to_micros(value, "x") == micros


@pytest.mark.parametrize("value", [0.0000001, -1, float("nan"), "abc", True])
def test_bad_prices(value):
    with pytest.raises(PriceError):
        to_micros(value, "x")


def _tokens(p: Price | None) -> tuple[int, int, int] | None:
    return None if p is None else (p.input, p.cached_input, p.output)


def test_lookup_exact_then_snapshot_then_most_specific_glob_then_default():
    t = PriceTable.from_config({})
    assert _tokens(t.lookup("gpt-4o-mini")) == (150_000, 75_000, 600_000)
    assert t.lookup("gpt-4o-mini-2024-07-18") == t.lookup("gpt-4o-mini")
    assert _tokens(t.lookup("gpt-4o-2024-08-06")) == (2_500_000, 1_250_000, 10_000_000)
    assert _tokens(t.lookup("gpt-4o-2024-05-13")) == (5_000_000, 5_000_000, 15_000_000)  # its own entry
    assert t.lookup("o4-mini").input == 1_100_000 and t.lookup("o3-pro").input == 20_000_000
    assert _tokens(t.lookup("text-embedding-3-small")) == (20_000, 20_000, 0)
    assert _tokens(t.lookup("demo-echo")) == (0, 0, 0)
    assert t.lookup("llama3") is None
    t2 = PriceTable.from_config({"default": PriceConfig(input=1, output=2),
                                 "gpt-4o-mini": PriceConfig(input=0.2, output=0.8)})
    assert _tokens(t2.lookup("llama3")) == (1_000_000, 1_000_000, 2_000_000)
    assert _tokens(t2.lookup("gpt-4o-mini")) == (200_000, 200_000, 800_000)  # config replaces the shipped entry
    assert t2.lookup("gpt-4o-mini-2024-07-18") == t2.lookup("gpt-4o-mini")  # and its snapshots follow it


def test_cost_of_a_usage():
    p = Price(150_000, 75_000, 600_000)  # gpt-4o-mini
    # 1000 prompt tokens of which 400 cached, 500 output: (600*0.15 + 400*0.075 + 500*0.6) / 1M $ = 420 µ$
    assert p.cost(1000, 400, 500) == 420
    assert p.cost(1, 0, 0) == 1  # rounded up to a micro-dollar, once per request
    assert p.cost(0, 0, 0) == 0
    assert p.max_cost(1000, 500) == 450  # no cache hit, every output token


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"\$.prices.gpt-x.output: at most 6 decimals"):
        make_settings(tmp_path / "h", config_text='[prices."gpt-x"]\ninput = 1\noutput = 0.0000001\n')
    with pytest.raises(ConfigError, match=r"\$.tiers\[1\].name: duplicate"):
        make_settings(tmp_path / "h2", config_text='[[tiers]]\nname = "a"\n[[tiers]]\nname = "a"\n')
    with pytest.raises(ConfigError, match="unknown tier 'gold'"):
        make_settings(tmp_path / "h3", config_text='[limits]\ntier = "gold"\n')
    with pytest.raises(ConfigError, match="reservation_ttl_seconds"):
        make_settings(tmp_path / "h4", KEYPLANE_RESERVATION_TTL_SECONDS="0")
    s = make_settings(tmp_path / "h5", config_text=(
        '[[tiers]]\nname = "base"\n[tiers.rate_limits."*"]\nrpm = 10\n'
        '[[tiers]]\nname = "big"\nmin_paid = 100\nmin_days = 3\n[tiers.rate_limits."gpt-*"]\nrpm = 100\ntpm = 5000\n'
        '[limits]\nenabled = false\n[credit]\nenforce = true\n'))
    assert [t.name for t in s.file.tiers] == ["base", "big"] and s.file.tiers[1].rate_limits["gpt-*"].tpm == 5000
    assert s.file.limits.enabled is False and s.file.credit.enforce is True
