"""Registration guard for vLLM entry-point functions.

vLLM calls ``vllm.general_plugins`` entry points in every process it starts
(front end, engine core, workers), sometimes more than once, and a plugin that
raises there takes vLLM down. :func:`plugin_entry_point` makes a registration
function safe:

* the body runs once per process, even when called from several threads;
* what it registered is logged at INFO, once;
* a failure logs ONE error naming the plugin, the cause and the fix, and vLLM
  keeps running -- unless ``VLLM_PLUGIN_STRICT=1``, where it propagates.

A malformed ``VLLM_PLUGIN_STRICT`` (``maybe``) logs ONE error naming the
variable and the accepted values and counts as off (:func:`is_strict`): the
reader never raises, so it cannot itself end vLLM's plugin loading.

Core logs under ``vllm.plugins.core`` (plugins under ``vllm.plugins.<name>``),
so vLLM's own handler prints the lines with vLLM's format and level.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["PluginRegistrationError", "is_strict", "plugin_entry_point", "reset_for_tests"]

logger = logging.getLogger("vllm.plugins.core")

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.RLock()
# key -> (pid, outcome); outcome is "ok", "failed" or "skipped"
_state: dict[str, tuple[int, str]] = {}
#: Whether a malformed ``VLLM_PLUGIN_STRICT`` was reported in this process.
_bad_strict_reported = False


class PluginRegistrationError(RuntimeError):
    """A plugin's registration failed; the message names the plugin and the fix."""


def _strict() -> bool:
    """``VLLM_PLUGIN_STRICT`` as a bool; never raises. A malformed value logs ONE
    error (naming the variable and the accepted values) and counts as off."""
    global _bad_strict_reported
    from vllm_plugin_core._core_settings import SETTINGS
    from vllm_plugin_core.settings import SettingError

    try:
        return bool(SETTINGS.get("STRICT"))
    except SettingError as exc:
        if not _bad_strict_reported:
            _bad_strict_reported = True
            logger.error("%s Strict mode stays off: plugin failures and unsupported vLLM versions "
                         "are logged, not raised.", exc)
        return False


def is_strict() -> bool:
    """Whether ``VLLM_PLUGIN_STRICT=1`` asks a plugin's failures to propagate and
    stop vLLM. A malformed value logs one error and counts as off (it is not a
    request for fatal failures). Plugins that contain their own failures inside
    the engine consult it before swallowing one."""
    return _strict()


def plugin_entry_point(
    name: str,
    *,
    fix: str | None = None,
    vllm: str | None = None,
) -> Callable[[F], F]:
    """Decorate an entry-point function of plugin ``name``.

    Args:
        name: the plugin's name as users know it (e.g. ``vllm-plugin-models``).
        fix: what a user should do when registration fails (shown in the error).
        vllm: optional supported vLLM range (e.g. ``">=0.31,<0.35"``); out of
            range, the body is skipped with one warning.

    The wrapped function returns the body's return value on the first
    successful call in a process, and None on later calls or on failure.
    It gains ``.calls`` (how many times it was called in this process) and
    ``.ran`` (whether the body ran) for tests and diagnostics.
    """

    def decorate(func: F) -> F:
        key = f"{name}:{func.__module__}.{func.__qualname__}"

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            pid = os.getpid()
            with _lock:
                wrapper.calls += 1  # type: ignore[attr-defined]
                seen = _state.get(key)
                if seen is not None and seen[0] == pid:
                    return None
                _state[key] = (pid, "running")
                if vllm is not None:
                    from vllm_plugin_core.version import requires_vllm

                    if not requires_vllm(vllm, name=name).check():
                        _state[key] = (pid, "skipped")
                        return None
                try:
                    result = func(*args, **kwargs)
                except Exception as exc:
                    _state[key] = (pid, "failed")
                    if _strict():
                        raise PluginRegistrationError(_message(name, exc, fix)) from exc
                    logger.error(
                        "%s\n%s",
                        _message(name, exc, fix),
                        "".join(traceback.format_exception_only(type(exc), exc)).strip(),
                    )
                    return None
                _state[key] = (pid, "ok")
                wrapper.ran = True  # type: ignore[attr-defined]
                registered = "" if result is None else f": {_describe(result)}"
                logger.info("%s registered (pid %d)%s", name, pid, registered)
                return result

        wrapper.calls = 0  # type: ignore[attr-defined]
        wrapper.ran = False  # type: ignore[attr-defined]
        wrapper.__plugin_name__ = name  # type: ignore[attr-defined]
        wrapper.__vllm_range__ = vllm  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def _describe(result: Any) -> str:
    if isinstance(result, (list, tuple, set, frozenset)):
        return ", ".join(map(str, result)) or "nothing"
    return str(result)


def _message(name: str, exc: BaseException, fix: str | None) -> str:
    fix = fix or (
        f"check {name}'s settings and its supported vLLM range, or exclude it with "
        "VLLM_PLUGINS (a comma-separated allow-list of plugin names)"
    )
    return (
        f"Plugin {name} failed to register: {type(exc).__name__}: {exc}. "
        f"Fix: {fix}. vLLM continues without it; set VLLM_PLUGIN_STRICT=1 to make this fatal."
    )


def outcome(name_prefix: str) -> dict[str, str]:
    """Outcomes recorded in this process for keys starting with ``name_prefix``."""
    pid = os.getpid()
    return {k: v[1] for k, v in _state.items() if k.startswith(name_prefix) and v[0] == pid}


def reset_for_tests() -> None:
    """Forget every registration in this process (tests only)."""
    global _bad_strict_reported
    with _lock:
        _state.clear()
        _bad_strict_reported = False
