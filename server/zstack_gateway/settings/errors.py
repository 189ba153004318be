"""The error every settings check raises: a leaf module, importable from anywhere."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot work; the message names the setting and says why (and how to fix it)."""
