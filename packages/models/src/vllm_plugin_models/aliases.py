"""Architecture aliases: ``VLLM_PLUGIN_MODELS_ALIASES="NewArch=ExistingArch,..."``.

Each alias is registered to the implementation vLLM uses for the existing
architecture, so a checkpoint whose ``config.json`` names a renamed
architecture loads without editing it. Standard library only at import.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["AliasError", "parse_aliases", "register_aliases"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class AliasError(ValueError):
    """An alias entry cannot be used; the message names the entry."""


def parse_aliases(raw: str) -> list[tuple[str, str]]:
    """``"A=B, C=D"`` -> ``[("A", "B"), ("C", "D")]``; malformed entries raise."""
    pairs: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        alias, sep, target = (part.strip() for part in entry.partition("="))
        if not sep or not alias or not target:
            raise AliasError(
                f"VLLM_PLUGIN_MODELS_ALIASES entry {entry!r} is malformed: expected NewArch=ExistingArch"
            )
        for name in (alias, target):
            if not _NAME.match(name):
                raise AliasError(
                    f"VLLM_PLUGIN_MODELS_ALIASES entry {entry!r}: {name!r} is not an architecture name "
                    "(letters, digits and underscores)"
                )
        if alias == target:
            raise AliasError(f"VLLM_PLUGIN_MODELS_ALIASES entry {entry!r} maps an architecture to itself")
        if alias in seen and seen[alias] != target:
            raise AliasError(
                f"VLLM_PLUGIN_MODELS_ALIASES names {alias!r} twice ({seen[alias]} and {target})"
            )
        seen[alias] = target
        pairs.append((alias, target))
    return pairs


def register_aliases(registry: Any, pairs: list[tuple[str, str]], *, allow_override: bool,
                     builtin: set[str]) -> list[str]:
    """Register each alias with vLLM's ``ModelRegistry``; return what was registered.

    ``builtin`` is the set of architectures vLLM had before plugins ran.
    """
    done = []
    for alias, target in pairs:
        known = set(registry.get_supported_archs())
        if target not in known:
            raise AliasError(
                f"VLLM_PLUGIN_MODELS_ALIASES entry {alias}={target}: vLLM has no architecture {target!r} "
                "(see vllm.ModelRegistry.get_supported_archs())"
            )
        if alias in builtin and not allow_override:
            raise AliasError(
                f"VLLM_PLUGIN_MODELS_ALIASES entry {alias}={target} would replace vLLM's own {alias}; "
                "set VLLM_PLUGIN_MODELS_ALLOW_OVERRIDE=1 to allow that"
            )
        impl = registry.models[target]
        module, cls = getattr(impl, "module_name", None), getattr(impl, "class_name", None)
        if module and cls:
            registry.register_model(alias, f"{module}:{cls}")  # stays lazy
        else:
            registry.models[alias] = impl
        done.append(f"{alias}->{target}")
    return done
