"""Typed plugin settings read from environment variables.

A plugin declares its settings once::

    SETTINGS = Settings("stats", [
        Setting("PATH", str, None, "File or directory for the JSON Lines output."),
        Setting("MAX_BYTES", int, 0, "Rotate the file past this size (0: never)."),
    ])
    SETTINGS.get("PATH")            # reads VLLM_PLUGIN_STATS_PATH

Every variable is named ``VLLM_PLUGIN_<PACKAGE>_<SETTING>``. A bad value raises
:class:`SettingError` naming the variable, the value and the expected form.
Declared settings are announced to vLLM's environment validator by core's
general plugin (see :mod:`vllm_plugin_core._entry`), so vLLM never warns
``Unknown vLLM environment variable detected`` for them.

This module imports only the standard library.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Setting", "SettingError", "Settings", "all_declared_settings", "parse_bool"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingError(ValueError):
    """A plugin setting holds a value that cannot be used."""


def parse_bool(raw: str) -> bool:
    """Parse ``1/0, true/false, yes/no, on/off`` (case-insensitive)."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _parse_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


_PARSERS: dict[Any, Callable[[str], Any]] = {
    str: str,
    int: int,
    float: float,
    bool: parse_bool,
    list: _parse_list,
}

_FORMS: dict[Any, str] = {
    str: "a string",
    int: "an integer such as 42",
    float: "a number such as 0.5",
    bool: "a boolean: 1/0, true/false, yes/no or on/off",
    list: "a comma-separated list such as a,b,c",
}


@dataclass(frozen=True)
class Setting:
    """One environment-variable setting of a plugin.

    Args:
        name: upper-case suffix, e.g. ``PATH`` for ``VLLM_PLUGIN_STATS_PATH``.
        type: ``str``, ``int``, ``float``, ``bool``, ``list`` (comma-separated)
            or a callable that parses the raw string and raises ``ValueError``.
        default: value when the variable is unset (returned as is).
        help: one line for docs, ``vllm-plugins doctor`` and error messages.
        check: optional validator of the parsed value; raise ``ValueError``
            with the expected form.
        form: human description of the accepted form (defaults from ``type``).
    """

    name: str
    type: Any = str
    default: Any = None
    help: str = ""
    check: Callable[[Any], None] | None = None
    form: str | None = None

    def expected_form(self) -> str:
        return self.form or _FORMS.get(self.type, getattr(self.type, "__name__", "a value"))

    def parse(self, env_name: str, raw: str) -> Any:
        parser = _PARSERS.get(self.type, self.type)
        try:
            value = parser(raw)
            if self.check is not None:
                self.check(value)
        except (ValueError, TypeError) as exc:
            # parse_bool's message repeats the accepted values the bool form lists
            detail = f" ({exc})" if str(exc) and parser is not parse_bool else ""
            raise SettingError(
                f"{env_name}={raw!r} is not valid: expected {self.expected_form()}"
                f"{detail}. {self.help}".rstrip()
            ) from None
        return value


@dataclass
class Settings:
    """The declared settings of one package (``VLLM_PLUGIN_<PACKAGE>_*``)."""

    package: str
    settings: Iterable[Setting] = field(default_factory=list)
    prefix: str = ""

    def __post_init__(self) -> None:
        self.settings = list(self.settings)
        if not self.prefix:
            pkg = self.package.upper().replace("-", "_")
            self.prefix = f"VLLM_PLUGIN_{pkg}_" if pkg else "VLLM_PLUGIN_"
        self._by_name = {s.name: s for s in self.settings}
        _REGISTRY[self.prefix] = self

    def env_name(self, name: str) -> str:
        return self.prefix + name

    def env_names(self) -> list[str]:
        return [self.env_name(s.name) for s in self.settings]

    def get(self, name: str, environ: Mapping[str, str] | None = None) -> Any:
        """Read and validate one setting; raise :class:`SettingError` if bad."""
        setting = self._by_name[name]
        env = os.environ if environ is None else environ
        env_name = self.env_name(name)
        raw = env.get(env_name)
        if raw is None or (raw == "" and setting.type is not str):
            return setting.default
        return setting.parse(env_name, raw)

    def is_set(self, name: str, environ: Mapping[str, str] | None = None) -> bool:
        env = os.environ if environ is None else environ
        return self.env_name(name) in env

    def read_all(self, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Read every setting; raise on the first bad one."""
        return {s.name: self.get(s.name, environ) for s in self.settings}

    def describe(self) -> list[dict[str, Any]]:
        """Rows for docs and ``doctor``: variable, type, default, help."""
        return [
            {
                "variable": self.env_name(s.name),
                "form": s.expected_form(),
                "default": s.default,
                "help": s.help,
            }
            for s in self.settings
        ]


_REGISTRY: dict[str, Settings] = {}


def all_declared_settings() -> dict[str, Settings]:
    """Settings declared in this process so far, by variable prefix."""
    return dict(_REGISTRY)
