"""The price table: exact integer micro-dollars, glob lookup, cost of a usage."""

from __future__ import annotations

import pytest

from keyplane.billing.price import Price
from keyplane.billing.prices import PriceTable
from keyplane.billing.prices_file import PriceError, to_micros
from keyplane.config import ConfigError
from keyplane.config import Price as PriceConfig
from tests.support import make_settings


@pytest.mark.parametrize(
    "value,micros",
    [
        (0.15, 150_000),
        (0.075, 75_000),
        (2.5, 2_500_000),
        (0.1, 100_000),
        (1e-6, 1),
        (600, 600_000_000),
        ("0.30", 300_000),
        (0.000001, 1),
    ],
)
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
    t2 = PriceTable.from_config(
        {"default": PriceConfig(input=1, output=2), "gpt-4o-mini": PriceConfig(input=0.2, output=0.8)}
    )
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
    s = make_settings(
        tmp_path / "h5",
        config_text=(
            '[[tiers]]\nname = "base"\n[tiers.rate_limits."*"]\nrpm = 10\n'
            '[[tiers]]\nname = "big"\nmin_paid = 100\nmin_days = 3\n'
            '[tiers.rate_limits."gpt-*"]\nrpm = 100\ntpm = 5000\n'
            "[limits]\nenabled = false\n[credit]\nenforce = true\n"
        ),
    )
    assert [t.name for t in s.file.tiers] == ["base", "big"] and s.file.tiers[1].rate_limits["gpt-*"].tpm == 5000
    assert s.file.limits.enabled is False and s.file.credit.enforce is True


def test_a_usage_by_modality_is_priced_at_each_rate():
    from keyplane.billing.price import Tokens

    t = PriceTable.from_config({})
    rt = t.lookup("gpt-realtime")  # text $4 / $0.40 / $16, audio $32 / $0.40 / $64 per 1M tokens
    assert rt is not None and (rt.input, rt.audio_input, rt.cached_audio_input, rt.audio_output) == (
        4_000_000,
        32_000_000,
        400_000,
        64_000_000,
    )
    by = Tokens(text_in=1000, audio_in=2000, cached_text=400, cached_audio=500, text_out=300, audio_out=700)
    assert rt.cost_by(by) == (2400 + 160 + 48000 + 200 + 4800 + 44800, 2400 + 160 + 48000 + 200)
    # Without the details, every token at the dearest rate; and that is what is reserved.
    assert rt.cost(3000, 900, 1000) == (2100 * 32 + 900 * 0.4 + 1000 * 64)
    assert rt.max_cost(3000, 1000) == 3000 * 32 + 1000 * 64
    # Cached tokens the usage does not attribute get the smallest discount they can have: text first here
    # ($4 -> $0.40), then audio ($32 -> $0.40).
    rest = Tokens(text_in=100, audio_in=100, cached_rest=150)
    assert rt.cost_by(rest)[0] == round(100 * 0.4 + 50 * 0.4 + 50 * 32)
    # A model without audio rates: the text rates for everything, as before.
    mini = t.lookup("gpt-4o-mini")
    assert mini is not None and mini.cost_by(Tokens(text_in=1000, cached_rest=400, text_out=500)) == (
        mini.cost(1000, 400, 500),
        mini.cost(1000, 400, 0),
    )
    # A service tier scales the audio rates too.
    assert rt.scaled(2_000_000).audio_output == 128_000_000


def test_audio_rates_in_keyplane_toml(tmp_path):
    t = PriceTable.from_config({"voice": PriceConfig(input=1, output=2, audio_input=10, audio_output=20)})
    p = t.lookup("voice")
    assert p is not None and (p.audio_input, p.cached_audio_input, p.audio_output) == (
        10_000_000,
        10_000_000,
        20_000_000,
    )
    with pytest.raises(PriceError, match="cached_audio_input: needs audio_input"):
        PriceTable.from_config({"voice": PriceConfig(input=1, cached_audio_input=1)})
    with pytest.raises(ConfigError, match=r"\$.prices.v.audio_output: must be >= 0"):
        make_settings(tmp_path / "h", config_text='[prices."v"]\ninput = 1\naudio_output = -1\n')


def test_a_price_entry_may_say_its_model_bills_images_dearer(tmp_path):
    """`image_tokens` in a price entry: an alias keyplane cannot know by name (here of gpt-4o-mini) reserves each
    input image at that many tokens; less than what the name already tells changes nothing; < 1 is refused."""
    import orjson

    from keyplane.billing.quote_tokens import quote_tokens

    t = PriceTable.from_config(
        {
            "vision-cheap": PriceConfig(input=1, output=1, image_tokens=48_169),
            "plain": PriceConfig(input=1, output=1),
            "gpt-4o-mini": PriceConfig(input=1, output=1, image_tokens=10),
        }
    )
    img = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    body = orjson.dumps({"messages": [{"role": "user", "content": [img, img, img]}]})

    def prompt(model: str, b: bytes = body) -> int:
        return quote_tokens(t, "/v1/chat/completions", model, b, 1, False, 1).prompt

    def images(model: str) -> int:  # what the images add (the role's tokens depend on the model's tokenizer)
        return prompt(model) - prompt(model, orjson.dumps({"messages": [{"role": "user", "content": []}]}))

    assert prompt("vision-cheap") - prompt("plain") == 3 * (48_169 - 6_000)
    assert images("gpt-4o-mini") == images("vision-cheap") == 3 * 48_169  # known by its name: never less
    with pytest.raises(ConfigError, match=r"image_tokens: must be >= 1"):
        make_settings(tmp_path / "h", config_text='[prices."v"]\ninput = 1\nimage_tokens = 0\n')
