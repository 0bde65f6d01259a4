"""The error of a bad setting and the one rule-check every settings dataclass uses.

Each stage owns its settings (``stages/*/settings.py``); ``pipeline/config.py`` composes them into
the YAML config and prefixes a message with the file it came from.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal


class ConfigError(ValueError):
    """A bad config value; the message names the key, the value and the fix."""


def require(ok: bool, key: str, value: Any, rule: str, fix: str) -> None:
    """``ConfigError`` "KEY RULE, got VALUE: FIX" unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} {rule}, got {value!r}: {fix}")


def literal_choices(hint: Any) -> tuple[Any, ...]:
    """The allowed values of a ``Literal[...]`` type (also inside ``Optional``, a list or a union,
    each once); () for any other type."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    return tuple(dict.fromkeys(c for arg in typing.get_args(hint) for c in literal_choices(arg)))


def require_choices(settings: Any, section: str) -> None:
    """``ConfigError`` unless every field of the settings dataclass ``settings`` typed by a
    ``Literal`` holds one of its values (each item of a list; None where the type allows it).

    The one check of every choice: the YAML loader's type check covers a config file, this also
    a settings object built in code (`dataclasses.replace` of the experiment's methods)."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        hint = hints[f.name]
        choices = literal_choices(hint)
        value = getattr(settings, f.name)
        if not choices or (value is None and type(None) in typing.get_args(hint)):
            continue
        # `type(v) is type(c)`: True equals 1 but is no ZeRO stage.
        allowed = all(
            any(v == c and type(v) is type(c) for c in choices)
            for v in (value if isinstance(value, list) else [value])
        )
        require(
            allowed,
            f"{section}.{f.name}",
            value,
            f"must be one of {', '.join(map(repr, choices))}",
            "pick one of them",
        )
