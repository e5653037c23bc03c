"""docs/configuration.md's tables are the ones generated from the settings' declarations (keyplane.config_docs)."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import pytest

from keyplane import config_docs
from keyplane.config import SETTINGS, Settings, Upstream


def test_the_docs_tables_are_the_generated_ones():
    text = config_docs.DOCS.read_text("utf-8")
    assert config_docs.render(text) == text, "the docs drifted: run python -m keyplane.config_docs --write"
    assert config_docs.main(["--check"]) == 0


def test_a_drifted_table_is_caught():
    text = config_docs.DOCS.read_text("utf-8")
    for drifted in (
        text.replace("| `port` | `KEYPLANE_PORT` | `8080` |", "| `port` | `KEYPLANE_PORT` | `8081` |"),
        text.replace("| `sso_create_users` |", "| `sso_create_user` |"),
        text.replace(
            config_docs.end("settings"),
            "| `extra` | `KEYPLANE_EXTRA` | (empty) | Not declared. |\n" + config_docs.end("settings"),
        ),
        text.replace("| `weight` | `1` |", "| `weight` | `2` |"),
        text.replace("| cap of the backoff |", "| the cap of the backoff |"),
    ):
        assert drifted != text and config_docs.render(drifted) != drifted
    with pytest.raises(ValueError, match="markers"):
        config_docs.render(text.replace(config_docs.end("upstreams"), ""))


def test_every_setting_is_declared_once_and_is_a_field_of_settings():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert set(names) <= set(Settings.__dataclass_fields__)
    assert {s.env for s in SETTINGS} == {f"KEYPLANE_{n.upper()}" for n in names}
    assert all(s.help for s in SETTINGS)


def test_every_upstream_field_has_a_doc_line():
    docs = config_docs.field_docs(Upstream)
    assert [f.name for f in msgspec.structs.fields(Upstream)] == list(docs)
    assert all(docs.values())


FEATURE_SCHEMAS = (
    "keyplane.configspec",
    "keyplane.config_keys",
    "keyplane.access.config",
    "keyplane.alerts.config",
    "keyplane.billing.config",
    "keyplane.billing.prices",
    "keyplane.cache.config",
    "keyplane.guard.config",
    "keyplane.guard.rules",
    "keyplane.identity.config",
    "keyplane.limits.config",
    "keyplane.providers.config",
    "keyplane.usage.config",
)


def test_the_features_schemas_do_not_import_config():
    """keyplane.config imports the features' schemas and checks, never the reverse (not even through a package)."""
    code = f"import sys\nfor m in {FEATURE_SCHEMAS!r}: __import__(m)\nprint('keyplane.config' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
