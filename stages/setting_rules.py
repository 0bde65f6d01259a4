"""The error of a bad setting and the one rule-check every settings dataclass uses.

Each stage owns its settings (``stages/*/settings.py``); ``pipeline/config.py`` composes them into
the YAML config and prefixes a message with the file it came from.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A bad config value; the message names the key, the value and the fix."""


def require(ok: bool, key: str, value: Any, rule: str, fix: str) -> None:
    """``ConfigError`` "KEY RULE, got VALUE: FIX" unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} {rule}, got {value!r}: {fix}")
