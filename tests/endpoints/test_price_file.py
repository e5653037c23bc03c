"""The price table from a file path or URL the operator keeps current (the prices_file setting)."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest
from openai import OpenAI

from keyplane.billing.prices import PriceTable
from keyplane.billing.prices_file import DATA, PriceError
from tests.billing.conftest import billing_of

TABLE = '[prices."fake-listed"]\ninput = 0\noutput = 3200\n\n[tools]\nweb_search = 0.02\n'


def test_a_price_file_replaces_the_shipped_table(make_gateway, fake, tmp_path):
    f = tmp_path / "prices.toml"
    f.write_text(TABLE)
    srv = make_gateway(KEYPLANE_PRICES_FILE=str(f))
    client = OpenAI(base_url=srv.v1, api_key=srv.api_key, max_retries=0)
    client.chat.completions.create(model="fake-listed", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert srv.call(billing_of(srv).spent("project", srv.project_id))[0] == 5 * 3200
    prices = billing_of(srv).prices
    assert prices.lookup("gpt-5") is None and prices.tools == {"web_search": 20_000}
    assert prices.lookup("gpt-4o-mini") is not None  # keyplane.toml's own entries still apply


def test_a_price_url_is_fetched_and_errors_are_clear(tmp_path):
    (tmp_path / "p.toml").write_text(TABLE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        t = PriceTable.from_config({}, f"{url}/p.toml")
        assert t.lookup("fake-listed").output == 3_200_000_000 and t.lookup("gpt-5") is None
        with pytest.raises(PriceError, match="cannot fetch"):
            PriceTable.from_config({}, f"{url}/missing.toml")
    finally:
        server.shutdown()
    with pytest.raises(PriceError, match="cannot read"):
        PriceTable.from_config({}, str(tmp_path / "nope.toml"))
    assert PriceTable.from_config({}, str(DATA)).lookup("gpt-5") is not None


def test_the_shipped_table_notes_its_source_and_date():
    import tomllib

    data = tomllib.loads(DATA.read_text())
    assert data["source"].startswith("https://openai.com/api/pricing") and data["taken"][:4].isdigit()


def test_every_shipped_entry_has_its_source_and_date(tmp_path):
    import tomllib

    from keyplane.billing.prices_file import provenance, undated

    data = tomllib.loads(DATA.read_text())
    assert undated(data) == []
    src, taken = provenance(data)["gpt-4o-realtime-preview-2024-10-01"]  # an entry of its own source and date
    assert src.startswith("https://openai.com/index/") and taken == "2024-10-01"
    assert provenance(data)["gpt-4o-mini"] == (data["source"], data["taken"])  # the file's
    # An operator's file: an entry without a date (the file gives none) or with a source that is no address.
    odd = tomllib.loads(
        '[prices."a"]\ninput = 1\nsource = "https://example.com/p"\n\n'
        '[prices."b"]\ninput = 1\nsource = "my notes"\ntaken = "2025-01"\n\n'
        '[prices."c"]\ninput = 1\nsource = "https://example.com/p"\ntaken = "2025-01-31"\n'
    )
    assert undated(odd) == ["a", "b"]


# Models of the official SDK's model enums (chat, responses, images, audio, speech, embeddings, realtime,
# completions) the shipped table does not price, and why: a new one in the SDK fails this test until it is
# priced here (with its list price) or named below.
UNPRICED = {
    **dict.fromkeys(
        [
            "gpt-6-astra",
            "gpt-6.2-astra",
            "gpt-6.1-sol",
            "gpt-6.2-sol",
            "gpt-6.1-terra",
            "gpt-6-sol",
            "gpt-6-luna",
            "gpt-5.6-sol",
            "gpt-5.6-terra",
            "gpt-5.6-luna",
            "gpt-5.5",
            "gpt-5.5-2026-04-23",
            "gpt-5.5-pro",
            "gpt-5.5-pro-2026-04-23",
            "gpt-5.3-chat-latest",
            "gpt-5.2-chat-latest",
            "gpt-daybreak-blue-latest",
            "gpt-daybreak-red-latest",
            "gpt-5.6-cyber",
            "gpt-6-cyber",
            "gpt-rosalind-research",
            "gpt-6-rosalind",
            "gpt-6.2-astra-law",
            "gpt-6-astra-healthcare",
            "gpt-6.1-sol-healthcare",
            "gpt-6.2-astra-healthcare",
            "gpt-6.2-sol-healthcare",
            "gpt-image-2",
            "gpt-image-2-2026-04-21",
            "gpt-image-2.5-sunburst",
            "gpt-image-2.5-sunburst-2026-09-08",
            "gpt-image-2.5-flare",
            "gpt-image-2.5-flare-2026-09-08",
            "gpt-image-2.6-sunburst",
            "gpt-image-2.6-flare",
            "chatgpt-image-latest",
            "gpt-transcribe",
            "gpt-realtime-1.5",
            "gpt-realtime-2",
            "gpt-realtime-2.1",
            "gpt-realtime-2.1-mini",
            "gpt-audio-1.5",
        ],
        "list price not known to this table",
    ),
    "gpt-5.1-mini": "not a supported model id (the SDK keeps it for compatibility)",
    # Search models bill a search per request, which chat completions do not price.
    **dict.fromkeys(
        [
            "gpt-4o-search-preview",
            "gpt-4o-mini-search-preview",
            "gpt-4o-search-preview-2025-03-11",
            "gpt-4o-mini-search-preview-2025-03-11",
        ],
        "a web search fee per request",
    ),
    # Speech billed per token (text in, audio out), which the speech endpoint does not report.
    **dict.fromkeys(["gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15"], "token-priced speech"),
}


def _literals(t: object) -> list[str]:
    import typing

    out: list[str] = []
    for a in typing.get_args(t):
        out.extend([a] if isinstance(a, str) else _literals(a))
    return out


def test_the_models_the_sdk_lists_are_priced_or_named_as_not():
    import typing

    from openai.types.audio.speech_model import SpeechModel
    from openai.types.audio_model import AudioModel
    from openai.types.completion_create_params import CompletionCreateParamsBase
    from openai.types.embedding_model import EmbeddingModel
    from openai.types.image_model import ImageModel
    from openai.types.realtime.realtime_session_create_request_param import RealtimeSessionCreateRequestParam
    from openai.types.shared.responses_model import ResponsesModel

    models = [
        *_literals(ResponsesModel),
        *_literals(ImageModel),
        *_literals(AudioModel),
        *_literals(SpeechModel),
        *_literals(EmbeddingModel),
        *_literals(typing.get_type_hints(RealtimeSessionCreateRequestParam)["model"]),
        *_literals(typing.get_type_hints(CompletionCreateParamsBase)["model"]),
    ]
    t = PriceTable.from_config({})
    missing = {m for m in models if t.lookup(m) is None}
    assert missing == set(UNPRICED), (sorted(missing - set(UNPRICED)), sorted(set(UNPRICED) - missing))
    # Snapshots that kept their own prices are not priced as their model (which is cheaper).
    assert (t.lookup("gpt-3.5-turbo-0613").input, t.lookup("gpt-3.5-turbo-1106").input) == (1_500_000, 1_000_000)
    assert t.lookup("gpt-3.5-turbo-16k-0613").output == 4_000_000
    assert t.lookup("gpt-4o-realtime-preview-2024-10-01").audio_output == 200_000_000
    assert t.lookup("gpt-4o-realtime-preview-2024-12-17").audio_output == 80_000_000
