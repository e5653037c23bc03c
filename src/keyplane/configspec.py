"""How a flat setting is declared: once, as a field of its feature's settings dataclass.

A feature owns its flat settings (``keyplane.usage.config.UsageSettings``...) and the schemas of its
keyplane.toml sections; keyplane.config assembles them into ``Settings`` and ``FileConfig``. A field
declared with :func:`setting` carries everything else needs: its name (the field's, which is also the
key in keyplane.toml), its type (the annotation, or ``parse``), its default, its environment variable
(``KEYPLANE_<NAME>`` unless ``env`` says otherwise), its doc line (the docs table is generated from
it: ``python -m keyplane.config_docs``) and the check of its value. This module imports nothing of
keyplane, so any feature can use it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from typing import Any

_KEY = "keyplane.setting"


class ConfigError(ValueError):
    """A bad setting; the message names it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    name: str  # key in keyplane.toml (top level)
    env: str  # environment variable
    default: Any
    type: type  # what the file's or the environment's value is converted to
    help: str
    valid: tuple[Callable[[Any], bool], str] | None = None  # (test, "must be ..." text)

    def check(self, value: Any) -> str | None:
        """The problem with ``value`` (already of ``type``), or None."""
        if self.valid is None or self.valid[0](value):
            return None
        return f"setting `{self.name}` must be {self.valid[1]}"


def setting(
    default: Any,
    help: str,
    *,
    env: str = "",
    parse: type | None = None,
    choices: Sequence[str] = (),
    valid: tuple[Callable[[Any], bool], str] | None = None,
) -> Any:
    """A dataclass field declaring one flat setting (see the module's docstring)."""
    if choices:
        valid = (lambda v: v in choices, ", ".join(choices[:-1]) + " or " + choices[-1])
    return dataclasses.field(default=default, metadata={_KEY: (help, env, parse, valid)})


POSITIVE: typing.Final = (lambda v: v > 0, "> 0")


def settings_of(cls: type) -> tuple[Setting, ...]:
    """The settings a dataclass declares with :func:`setting`, in order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if _KEY not in f.metadata:
            continue
        help, env, parse, valid = f.metadata[_KEY]
        out.append(Setting(f.name, env or f"KEYPLANE_{f.name.upper()}", f.default, parse or hints[f.name], help, valid))
    return tuple(out)


def coerce(s: Setting, raw: Any, origin: str) -> Any:
    try:
        if s.type is bool and isinstance(raw, str):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if s.type is int and isinstance(raw, float):
            raise TypeError
        return s.type(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{origin}: setting `{s.name}` must be {s.type.__name__}, got {raw!r}") from None
