"""Surgical, reversible patches of one vLLM class or module.

A patch names its target (``"vllm.module:Class"`` or ``"vllm.module"``), the
attributes it adds and the attributes it replaces, why it exists and the
vLLM range it applies to. Patches live in a registry and are applied by name,
usually from ``VLLM_PLUGIN_PATCHES`` (comma-separated names, or ``*``)::

    p = Patch("quiet-foo", "vllm.foo:Bar", why="...", vllm=">=0.31,<0.33")

    @p.replaces_attr("method")
    def method(self, *args, **kwargs):
        return p.original("method")(self, *args, **kwargs)

    REGISTRY.register(p)
    REGISTRY.apply(["quiet-foo"])   # idempotent
    REGISTRY.revert("quiet-foo")

Two applied patches that replace the same attribute of the same target raise
:class:`PatchConflictError` naming both.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["REGISTRY", "Patch", "PatchConflictError", "PatchError", "PatchRegistry"]

logger = logging.getLogger("vllm.plugins.core")

_MISSING = object()


class PatchError(RuntimeError):
    """A patch cannot be applied (unknown name, missing target or attribute)."""


class PatchConflictError(PatchError):
    """Two patches replace the same attribute of the same target."""


def resolve_target(target: str) -> Any:
    """Import ``"pkg.mod"`` or ``"pkg.mod:Attr.Sub"`` and return the object."""
    module_name, _, attr_path = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PatchError(f"patch target {target!r}: cannot import {module_name!r} ({exc})") from exc
    for part in filter(None, attr_path.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise PatchError(f"patch target {target!r}: {module_name} has no {attr_path!r}") from exc
    return obj


@dataclass
class Patch:
    """One patch of one class or module.

    Args:
        name: unique name, used in ``VLLM_PLUGIN_PATCHES``.
        target: ``"module"`` or ``"module:Class"``.
        why: why it exists, and the upstream change after which it can go.
        vllm: vLLM version range it applies to (out of range: skipped, warned).
        adds: attributes the target must not have yet, set on apply.
        replaces: attributes the target must have, replaced on apply.
    """

    name: str
    target: str
    why: str = ""
    vllm: str | None = None
    adds: dict[str, Any] = field(default_factory=dict)
    replaces: dict[str, Any] = field(default_factory=dict)
    _originals: dict[str, Any] = field(default_factory=dict, repr=False)
    _applied_to: Any = field(default=None, repr=False)

    def replaces_attr(self, attr: str) -> Callable[[Any], Any]:
        """Decorator: the decorated object replaces ``attr`` on the target."""

        def decorate(obj: Any) -> Any:
            self.replaces[attr] = obj
            return obj

        return decorate

    def adds_attr(self, attr: str) -> Callable[[Any], Any]:
        """Decorator: the decorated object is added to the target as ``attr``."""

        def decorate(obj: Any) -> Any:
            self.adds[attr] = obj
            return obj

        return decorate

    def original(self, attr: str) -> Any:
        """The attribute this patch replaced (only while applied)."""
        try:
            return self._originals[attr]
        except KeyError:
            raise PatchError(f"patch {self.name!r} has not replaced {attr!r} (is it applied?)") from None

    @property
    def applied(self) -> bool:
        return self._applied_to is not None

    def _apply(self) -> None:
        obj = resolve_target(self.target)
        for attr in self.replaces:
            if not hasattr(obj, attr):
                raise PatchError(f"patch {self.name!r}: {self.target} has no attribute {attr!r} to replace")
        for attr in self.adds:
            if attr in vars(obj):
                raise PatchError(f"patch {self.name!r}: {self.target} already has {attr!r}; it only adds new attributes")
        for attr, new in self.replaces.items():
            # Keep the raw descriptor (staticmethod/classmethod) from the class dict.
            self._originals[attr] = vars(obj).get(attr, _MISSING)
            if self._originals[attr] is _MISSING:
                self._originals[attr] = getattr(obj, attr)
                self._inherited = {*getattr(self, "_inherited", set()), attr}
            setattr(obj, attr, new)
        for attr, new in self.adds.items():
            setattr(obj, attr, new)
        self._applied_to = obj

    def _revert(self) -> None:
        obj = self._applied_to
        inherited = getattr(self, "_inherited", set())
        for attr, old in self._originals.items():
            if attr in inherited:
                delattr(obj, attr)
            else:
                setattr(obj, attr, old)
        for attr in self.adds:
            if attr in vars(obj):
                delattr(obj, attr)
        self._originals.clear()
        self._inherited = set()
        self._applied_to = None


class PatchRegistry:
    """Named patches, applied and reverted as a whole or by name."""

    def __init__(self) -> None:
        self._patches: dict[str, Patch] = {}
        self._lock = threading.RLock()

    def register(self, patch: Patch, *, apply_if_selected: bool = True) -> Patch:
        """Add ``patch``; apply it now when ``VLLM_PLUGIN_PATCHES`` selects it."""
        from vllm_plugin_core._core_settings import SETTINGS

        with self._lock:
            existing = self._patches.get(patch.name)
            if existing is not None and existing is not patch:
                raise PatchError(f"a patch named {patch.name!r} is already registered")
            self._patches[patch.name] = patch
            if apply_if_selected:
                selected = SETTINGS.get("PATCHES")
                if "*" in selected or patch.name in selected:
                    self.apply([patch.name])
        return patch

    def names(self) -> list[str]:
        return sorted(self._patches)

    def get(self, name: str) -> Patch:
        try:
            return self._patches[name]
        except KeyError:
            known = ", ".join(self.names()) or "none registered"
            raise PatchError(f"unknown patch {name!r}; known patches: {known}") from None

    def is_applied(self, name: str) -> bool:
        return self.get(name).applied

    def _conflict(self, patch: Patch) -> None:
        for other in self._patches.values():
            if other is patch or not other.applied or other.target != patch.target:
                continue
            both = set(other.replaces) & set(patch.replaces) | set(other.adds) & set(patch.adds)
            if both:
                raise PatchConflictError(
                    f"patches {other.name!r} and {patch.name!r} both replace "
                    f"{', '.join(sorted(both))} of {patch.target}; apply only one of them"
                )

    def apply(self, names: Iterable[str]) -> list[str]:
        """Apply patches by name (``"*"`` for all); return the names applied now."""
        from vllm_plugin_core.version import requires_vllm

        names = list(names)
        if "*" in names:
            names = self.names()
        done: list[str] = []
        with self._lock:
            for name in names:
                patch = self.get(name)
                if patch.applied:
                    continue
                # A patch's range says where it is needed, not what was tested:
                # VLLM_PLUGINS_ALLOW_UNTESTED_VLLM does not widen it.
                if patch.vllm and not requires_vllm(patch.vllm, name=f"patch {name}",
                                                    allow_untested=False).check():
                    continue
                self._conflict(patch)
                patch._apply()
                logger.info("applied patch %s to %s", name, patch.target)
                done.append(name)
        return done

    def apply_from_env(self) -> list[str]:
        """Apply the patches named in ``VLLM_PLUGIN_PATCHES``."""
        from vllm_plugin_core._core_settings import SETTINGS

        return self.apply(SETTINGS.get("PATCHES"))

    def revert(self, name: str) -> bool:
        """Undo one patch; return whether it was applied."""
        with self._lock:
            patch = self.get(name)
            if not patch.applied:
                return False
            patch._revert()
            logger.info("reverted patch %s", name)
            return True

    def revert_all(self) -> None:
        for name in self.names():
            self.revert(name)


#: The process-wide registry that ``VLLM_PLUGIN_PATCHES`` applies from.
REGISTRY = PatchRegistry()
