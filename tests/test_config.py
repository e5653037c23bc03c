"""Settings: file + environment, validation messages naming the field, docs in step with the table."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from keyplane.config import DEFAULT_CONFIG, ConfigError, load_settings


def _load(tmp_path: Path, text: str | None = None, **env: str):
    home = tmp_path / "h"
    home.mkdir(exist_ok=True)
    if text is not None:
        (home / "keyplane.toml").write_text(text)
    return load_settings(env={"KEYPLANE_HOME": str(home), **env}, create_secret=True)


def test_defaults_and_secret_file(tmp_path):
    s = _load(tmp_path)
    assert s.is_sqlite and s.database_url.endswith("/h/keyplane.db") and s.port == 8080
    secret = tmp_path / "h" / "secret.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert _load(tmp_path).secret_key == s.secret_key  # stable across loads


def test_secret_file_readable_by_others_is_refused(tmp_path):
    _load(tmp_path)
    os.chmod(tmp_path / "h" / "secret.key", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        _load(tmp_path)


def test_env_overrides_file(tmp_path):
    s = _load(tmp_path, "port = 9000\n", KEYPLANE_PORT="9100")
    assert s.port == 9100
    assert _load(tmp_path, "port = 9000\n").port == 9000


def test_postgres_url_normalised(tmp_path):
    s = _load(tmp_path, KEYPLANE_DATABASE_URL="postgresql://u@h:5432/db")
    assert s.database_url == "postgresql+asyncpg://u@h:5432/db" and not s.is_sqlite


@pytest.mark.parametrize(
    "text,needle",
    [
        ("port = 'x'\n", "`port` must be int"),
        ("[[upstreams]]\nname = 'a'\nbase_url = 'http://x'\nweight = 'heavy'\n", "$.upstreams[0].weight"),
        ("[[upstreams]]\nname = 'a'\nbase_url = 'ftp://x'\n", "$.upstreams[0].base_url"),
        ("[[upstreams]]\nname = 'a'\nbase_url = 'http://x'\nbogus = 1\n", "bogus"),
        ("[[upstreams]]\nname='a'\nbase_url='http://x'\n[[upstreams]]\nname='a'\nbase_url='http://y'\n", "duplicate"),
        ("[[upstreams]]\nname = 'a'\nbase_url = 'http://x'\napi_key_env = 'sk-abc'\n", "api_key_env"),
        ("[prices.m]\ninput = -1\n", "$.prices.m.input"),
        ("secret_key = 'x'\n", "must not be in the config file"),
        ("this is = not toml [", "not valid TOML"),
        ("log_format = 'xml'\n", "log_format"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    assert needle in str(e.value)


@pytest.mark.parametrize(
    "text,needle",
    [
        # a top-level flat setting and a top-level section
        ("host = 'x'\nprot = 9000\n", "line 2: unknown key `$.prot`; did you mean `port`?"),
        ("[limts]\nenabled = false\n", "line 1: unknown key `$.limts`; did you mean `limits`?"),
        ("[[upstream]]\nname = 'a'\n", "line 1: unknown key `$.upstream`; did you mean `upstreams`?"),
        # nested sections, each with the line of the key
        ("[limits]\nenabled = true\ntierr = 'x'\n", "line 3: unknown key `$.limits.tierr`; did you mean `tier`?"),
        (
            "[guard]\nenabled = true\n\n[[guard.rules]]\nname = 'a'\nkind = 'ceiling'\nthreshold = 1\n"
            "[[guard.rules]]\nname = 'b'\nkind = 'ceiling'\nthresold = 1\n",
            "line 11: unknown key `$.guard.rules[1].thresold`; did you mean `threshold`?",
        ),
        (
            "[[alerts.sinks]]\ntype = 'webhook'\nurl = 'http://x'\nsecret_evn = 'S'\n",
            "line 4: unknown key `$.alerts.sinks[0].secret_evn`; did you mean `secret_env`?",
        ),
        (
            "[[providers]]\nname = 'p'\nadmin_key_env = 'K'\nsync_intervall = 60\n",
            "line 4: unknown key `$.providers[0].sync_intervall`; did you mean `sync_interval`?",
        ),
        (
            "[[tiers]]\nname = 't'\n[tiers.rate_limits.\"gpt-*\"]\nrpmm = 1\n",
            'line 4: unknown key `$.tiers[0].rate_limits."gpt-*".rpmm`; did you mean `rpm`?',
        ),
        ('[prices."m"]\ninput = 1\noutptu = 2\n', "line 3: unknown key `$.prices.m.outptu`; did you mean `output`?"),
        ("cache.ttll = '1m'\n", "line 1: unknown key `$.cache.ttll`; did you mean `ttl`?"),
        # no line in an inline table, but still the key path; no close name: the valid ones
        ("limits = { enabled = true, zzz = 1 }\n", "unknown key `$.limits.zzz` (valid: enabled, tier)"),
    ],
)
def test_unknown_keys_name_the_line_and_the_nearest_name(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    assert str(e.value) == f"{tmp_path / 'h' / 'keyplane.toml'}: {needle}"


def test_missing_explicit_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={"KEYPLANE_HOME": str(tmp_path)})


def test_default_config_loads(tmp_path):
    s = _load(tmp_path, DEFAULT_CONFIG)
    assert [u.name for u in s.file.upstreams] == ["demo", "openai"]


def test_every_upstream_field_is_documented():
    import msgspec

    from keyplane.config import Upstream

    docs = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    missing = [f.name for f in msgspec.structs.fields(Upstream) if f"| `{f.name}` |" not in docs]
    assert not missing, f"upstream fields missing from docs/configuration.md: {missing}"
