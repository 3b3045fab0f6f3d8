"""What the samplers do in vLLM's front end, before a request reaches the engine.

One patch of the front end's per-request validation
(``InputProcessor._validate_params``) does two jobs:

* **Refuse arguments the engine would ignore or misread.** vLLM's V1 model
  runner loads no logits-processor plugin when speculative decoding is on, and
  under async scheduling (CUDA) hands plugins ``-1`` placeholders for the
  newest tokens, but its front end still accepts their arguments: a request
  asking for DRY would get plain (or wrongly penalised) text with no sign why. Such a request gets vLLM's ``VLLMValidationError``
  (HTTP 400) naming the arguments and what to change. Can go: when vLLM's V1
  runner applies plugins with speculative decoding (core's compat canary
  fails then).
* **Resolve custom DRY breakers here, not in an engine step.** A
  ``dry_sequence_breakers`` set other than the default (which the engine
  resolves at start) is resolved against the model's tokenizer once per set
  and front-end process, and the table rides to the engine in the request's
  ``extra_args`` under :data:`~.breakers.WIRE_KEY` (any value a client put
  there is replaced). Can go: never; vLLM has no per-request hook that runs
  in the front end with the tokenizer.

Applied by the ``vllm.general_plugins`` entry point ``samplers`` in every
vLLM process; it acts only where requests are validated. Where it is not
applied (``VLLM_PLUGINS`` without ``samplers``), the engine resolves custom
sets itself and says so once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from vllm_plugin_core.patches import REGISTRY, Patch

__all__ = ["PATCH_NAME", "active_sampler_args", "attach_breakers", "install", "is_greedy"]

PATCH_NAME = "samplers-front-end-checks"

logger = logging.getLogger("vllm.plugins.samplers")


def is_greedy(params: Any) -> bool:
    """Whether vLLM samples ``params`` greedily (temperature below its epsilon)."""
    from vllm_plugin_samplers.params import GREEDY_BELOW

    temperature = getattr(params, "temperature", None)
    return temperature is not None and float(temperature) < GREEDY_BELOW


def active_sampler_args(extra_args: Mapping[str, Any] | None, greedy: bool = False) -> list[str]:
    """The arguments of ``extra_args`` that switch one of the samplers on
    (XTC does nothing under greedy decoding unless ``xtc_under_greedy``).

    Invalid values raise the samplers' own ``ValueError`` first.
    """
    from vllm_plugin_samplers import params as P

    on = []
    if P.parse_ngram(extra_args) is not None:
        on.append("no_repeat_ngram_size")
    if P.parse_dry(extra_args) is not None:
        on.append("dry_multiplier")
    xtc = P.parse_xtc(extra_args)
    if xtc is not None and (xtc.under_greedy or not greedy):
        on.append("xtc_probability")
    return on


def refusal(reason: str, names: list[str]) -> str:
    """The 400's text: ``reason`` (from core's compat layer) names the server setting to change."""
    return (f"{', '.join(names)} cannot take effect: {reason}. Or remove "
            f"{'it' if len(names) == 1 else 'them'} from the request")


_resolvers: dict[tuple[str, bool, str | None], Any] = {}
_failed: set[tuple[str, bool, str | None]] = set()
_lock = threading.Lock()


def _resolver(model_config: Any) -> Any:
    """The model tokenizer's breaker resolver, built once per process (None if
    the tokenizer cannot be loaded here: the engine then resolves, as at start)."""
    from vllm_plugin_samplers.breakers import load_resolver

    key = (str(model_config.tokenizer), bool(model_config.trust_remote_code),
           getattr(model_config, "tokenizer_revision", None))
    with _lock:
        if key in _resolvers or key in _failed:
            return _resolvers.get(key)
        try:
            _resolvers[key] = load_resolver(*key)
        except RuntimeError as exc:
            _failed.add(key)
            logger.warning("%s; custom dry_sequence_breakers are resolved in the engine instead", exc)
        return _resolvers.get(key)


def attach_breakers(model_config: Any, params: Any) -> None:
    """Put the resolved table of a request's custom breaker set into its ``extra_args``.

    Removes a table a client sent for the default set (or for no DRY); a new
    dict replaces ``params.extra_args``, so the caller's dict is not changed.
    Invalid arguments raise the samplers' ``ValueError``.
    """
    from vllm_plugin_samplers import params as P
    from vllm_plugin_samplers.breakers import WIRE_KEY

    extra = getattr(params, "extra_args", None)
    if not isinstance(extra, Mapping):
        return
    p = P.parse_dry(extra)
    custom = p is not None and p.sequence_breakers != P.DEFAULT_DRY_SEQUENCE_BREAKERS
    resolver = _resolver(model_config) if custom else None
    if resolver is None and WIRE_KEY not in extra:
        return  # the common case: nothing to add or remove, no copy
    rest = {k: v for k, v in extra.items() if k != WIRE_KEY}
    params.extra_args = rest if resolver is None else {**rest, WIRE_KEY: resolver.wire(p.sequence_breakers)}


def _make_patch() -> Patch:
    from vllm_plugin_core import compat

    cls = compat.input_processor_class()
    patch = Patch(
        PATCH_NAME,
        f"{cls.__module__}:{cls.__qualname__}",
        why=("V1 runs no logits-processor plugin under speculative decoding, yet accepts their "
             "arguments: refuse them with a 400 instead of ignoring them; and resolve custom DRY "
             "breakers in the front end, not in an engine step"),
    )

    @patch.replaces_attr("_validate_params")
    def _validate_params(self: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        # vLLM's client error: the front end answers 400 (a plain ValueError is a 500)
        from vllm.exceptions import VLLMValidationError

        reason = compat.logits_processors_skipped(self.vllm_config)
        if reason is not None:
            try:
                names = active_sampler_args(getattr(params, "extra_args", None), is_greedy(params))
            except ValueError as exc:
                raise VLLMValidationError(str(exc)) from exc
            if names:
                raise VLLMValidationError(refusal(reason, names), parameter="vllm_xargs")
        result = patch.original("_validate_params")(self, params, *args, **kwargs)
        if reason is None:
            try:
                attach_breakers(self.vllm_config.model_config, params)
            except ValueError as exc:
                raise VLLMValidationError(str(exc), parameter="vllm_xargs") from exc
        return result

    return patch


def install() -> bool:
    """Register and apply the patch (idempotent); return whether it is applied."""
    if PATCH_NAME not in REGISTRY.names():
        REGISTRY.register(_make_patch(), apply_if_selected=False)
    REGISTRY.apply([PATCH_NAME])
    return REGISTRY.is_applied(PATCH_NAME)
