"""The [models.*] and [cache] sections: typed, checked at start, each problem naming its field."""

from __future__ import annotations

import pytest

from keyplane.config import ConfigError, load_settings


def load(tmp_path, text: str, **env: str):
    (tmp_path / "keyplane.toml").write_text(text)
    return load_settings(env={"KEYPLANE_HOME": str(tmp_path), **env})


def test_defaults_and_a_full_section(tmp_path):
    s = load(tmp_path, "")
    assert s.file.models == {} and s.file.cache.enabled is None and s.file.cache.backend == "memory"
    s = load(
        tmp_path,
        '[models."llama-*"]\nrouting = "prefix"\nmin_match_tokens = 128\n\n'
        '[[upstreams]]\nname = "a"\nbase_url = "http://x/v1"\nprefix_cache_tokens = 500000\n\n'
        '[cache]\nprojects = ["*"]\nttl = "90s"\nbackend = "redis"\n',
        KEYPLANE_REDIS_URL="redis://127.0.0.1:6379/0",
    )
    assert s.file.models["llama-*"].routing == "prefix" and s.file.models["llama-*"].min_match_tokens == 128
    assert s.file.upstreams[0].prefix_cache_tokens == 500_000 and s.file.cache.ttl == "90s"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[models."m"]\nrouting = "sticky"\n', "routing"),
        ('[models."m"]\nload_factor = 0.5\n', "load_factor"),
        ('[models."m"]\nblock_chars = 4\n', "block_chars"),
        ('[cache]\nttl = "soon"\n', "$.cache.ttl"),
        ("[cache]\nmax_entries = 0\n", "$.cache.max_entries"),
        ('[cache]\nprojects = ["*"]\nbackend = "redis"\n', "$.cache.backend"),
        ('[cache]\nkeys = "key_1"\n', "$.cache.keys"),
    ],
)
def test_problems_name_their_field(tmp_path, text, field):
    with pytest.raises(ConfigError, match=field.replace("$", r"\$").replace(".", r"\.")):
        load(tmp_path, text)
