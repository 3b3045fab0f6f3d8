"""Refuse sampler arguments that the engine would silently ignore.

vLLM's V1 model runner loads no logits-processor plugin when speculative
decoding is on, but its front end still validates and accepts their
arguments: a request asking for DRY would get plain text with no sign why.
This patch of the front end's per-request validation turns that into vLLM's
``VLLMValidationError`` (HTTP 400) that names the arguments and what to change.

Applied by the ``vllm.general_plugins`` entry point ``samplers`` in every
vLLM process; it acts only where requests are validated, and only when
:func:`vllm_plugin_core.compat.logits_processors_skipped` says the plugins
will not run. Can go: when vLLM's V1 runner applies plugins with
speculative decoding (core's compat canary fails then).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vllm_plugin_core.patches import REGISTRY, Patch

__all__ = ["PATCH_NAME", "active_sampler_args", "install"]

PATCH_NAME = "samplers-refuse-args-without-processors"


def active_sampler_args(extra_args: Mapping[str, Any] | None) -> list[str]:
    """The arguments of ``extra_args`` that switch one of the samplers on.

    Invalid values raise the samplers' own ``ValueError`` first.
    """
    from vllm_plugin_samplers import params as P

    on = []
    if P.parse_ngram(extra_args) is not None:
        on.append("no_repeat_ngram_size")
    if P.parse_dry(extra_args) is not None:
        on.append("dry_multiplier")
    if P.parse_xtc(extra_args) is not None:
        on.append("xtc_probability")
    return on


def refusal(reason: str, names: list[str]) -> str:
    return (f"{', '.join(names)} cannot take effect: {reason}. Remove "
            f"{'it' if len(names) == 1 else 'them'} from the request, or serve without "
            "speculative decoding (on a CUDA build, VLLM_USE_V2_MODEL_RUNNER=1 runs them with it)")


def _make_patch() -> Patch:
    from vllm_plugin_core import compat

    cls = compat.input_processor_class()
    patch = Patch(
        PATCH_NAME,
        f"{cls.__module__}:{cls.__qualname__}",
        why=("V1 runs no logits-processor plugin under speculative decoding, yet accepts their "
             "arguments; refuse them with a 400 instead of ignoring them"),
    )

    @patch.replaces_attr("_validate_params")
    def _validate_params(self: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        reason = compat.logits_processors_skipped(self.vllm_config)
        if reason is not None:
            # vLLM's client error: the front end answers 400 (a plain ValueError is a 500)
            from vllm.exceptions import VLLMValidationError

            try:
                names = active_sampler_args(getattr(params, "extra_args", None))
            except ValueError as exc:
                raise VLLMValidationError(str(exc)) from exc
            if names:
                raise VLLMValidationError(refusal(reason, names), parameter="vllm_xargs")
        return patch.original("_validate_params")(self, params, *args, **kwargs)

    return patch


def install() -> bool:
    """Register and apply the patch (idempotent); return whether it is applied."""
    if PATCH_NAME not in REGISTRY.names():
        REGISTRY.register(_make_patch(), apply_if_selected=False)
    REGISTRY.apply([PATCH_NAME])
    return REGISTRY.is_applied(PATCH_NAME)
