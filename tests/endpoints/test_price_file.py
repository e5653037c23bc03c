"""The price table from a file path or URL the operator keeps current (the prices_file setting)."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest
from openai import OpenAI

from keyplane.billing.prices import DATA, PriceError, PriceTable
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
