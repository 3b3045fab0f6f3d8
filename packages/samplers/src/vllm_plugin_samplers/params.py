"""Parse per-request sampler arguments from ``SamplingParams.extra_args``.

Each ``parse_*`` function takes the request's ``extra_args`` mapping (which may
be ``None``) and returns a frozen parameter object, or ``None`` when that
sampler is off for the request. Invalid values raise :class:`ValueError` with a
message naming the field, the bad value and the allowed range or form.
Unknown keys are ignored (they may belong to other plugins).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_DRY_SEQUENCE_BREAKERS",
    "DEFAULT_XTC_THRESHOLD",
    "GREEDY_BELOW",
    "MAX_DRY_SEQUENCE_BREAKERS",
    "MAX_LENGTH_ARG",
    "MAX_NGRAM_WHITELIST",
    "MIN_XTC_THRESHOLD",
    "DryParams",
    "NgramParams",
    "XtcParams",
    "parse_dry",
    "parse_ngram",
    "parse_xtc",
]

DEFAULT_DRY_SEQUENCE_BREAKERS: tuple[str, ...] = ("\n", ":", '"', "*")
DEFAULT_XTC_THRESHOLD = 0.1
MAX_DRY_SEQUENCE_BREAKERS = 32  # bounds the work of resolving a set
#: Upper bound of every length argument (``no_repeat_ngram_size``,
#: ``dry_allowed_length``, ``dry_penalty_last_n``): longer than any context a
#: model serves, and far inside the int32 the engine keeps them in.
MAX_LENGTH_ARG = 1 << 24
#: Most token ids one ``no_repeat_ngram_whitelist`` may hold.
MAX_NGRAM_WHITELIST = 256
#: Smallest ``xtc_threshold``: at most ``1 / threshold`` tokens can reach it, so
#: this bounds the ``top-k`` each XTC step takes to 1001.
MIN_XTC_THRESHOLD = 0.001
#: vLLM samples greedily below this temperature (``vllm.sampling_params._SAMPLING_EPS``):
#: XTC is then off unless the request sets ``xtc_under_greedy``.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class NgramParams:
    """No-repeat n-gram: ban any token that would complete an n-gram seen before.

    ``window``: only n-grams inside the last ``window`` context tokens count
    (0: the whole context); ``whitelist``: token ids never banned (DeepSeek-OCR's
    ``window_size`` and ``whitelist_token_ids``).
    """

    size: int
    window: int = 0
    whitelist: frozenset[int] = frozenset()


@dataclass(frozen=True)
class DryParams:
    """DRY ("Don't Repeat Yourself") penalty settings.

    ``penalty_last_n``: how many trailing context tokens to scan; 0 or -1 means
    the whole context.
    """

    multiplier: float
    base: float = 1.75
    allowed_length: int = 2
    sequence_breakers: tuple[str, ...] = DEFAULT_DRY_SEQUENCE_BREAKERS
    penalty_last_n: int = 0


@dataclass(frozen=True)
class XtcParams:
    """XTC ("Exclude Top Choices") settings.

    ``eos_newline_guard``: a step that would remove an end-of-sequence or
    newline token removes nothing (text-generation-webui's rule);
    ``under_greedy``: act under greedy decoding (temperature 0) too.
    """

    threshold: float
    probability: float
    eos_newline_guard: bool = True
    under_greedy: bool = False


_MISSING: Any = object()


def _args(extra_args: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if extra_args is None:
        return {}
    if not isinstance(extra_args, Mapping):
        raise ValueError(f"extra_args must be a dict or None, got {type(extra_args).__name__}")
    return extra_args


def _get(args: Mapping[str, Any], name: str) -> Any:
    """Return the value for ``name``; absent and ``None`` both give ``_MISSING``."""
    value = args.get(name, _MISSING)
    return _MISSING if value is None else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _int_field(name: str, value: Any, minimum: int, maximum: int = MAX_LENGTH_ARG) -> int:
    if not _is_int(value) or not minimum <= value <= maximum:
        raise ValueError(f"{name} must be an integer in [{minimum}, {maximum}], got {value!r}")
    return int(value)


#: Longest JSON text a list argument may be given as (32 breakers of 40 characters, escaped, fit).
MAX_JSON_CHARS = 16384


def _json(name: str, text: str) -> Any:
    """``json.loads`` of a bounded text; nesting too deep is a ValueError naming ``name``."""
    if len(text) > MAX_JSON_CHARS:
        raise ValueError(f"{name} may be at most {MAX_JSON_CHARS} characters of JSON, got {len(text)}")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{name} is nested too deeply") from None


def _breakers_field(name: str, value: Any) -> tuple[str, ...]:
    form = ("a list of non-empty strings, a JSON string of such a list, or text-generation-webui's "
            'comma-separated quoted strings (\'"\\n", ":", "*"\')')
    raw = value
    if isinstance(value, str):
        try:
            value = _json(name, value)
        except json.JSONDecodeError:
            try:  # webui: the list's items without the brackets
                value = _json(name, f"[{value}]") or None
            except json.JSONDecodeError:
                raise ValueError(f"{name} must be {form}, got {raw!r}") from None
        if isinstance(value, str):  # a single quoted string
            value = [value]
    if not isinstance(value, list | tuple) or not all(
        isinstance(s, str) and s for s in value
    ):
        raise ValueError(f"{name} must be {form}, got {raw!r}")
    if len(value) > MAX_DRY_SEQUENCE_BREAKERS:
        raise ValueError(f"{name} may hold at most {MAX_DRY_SEQUENCE_BREAKERS} breakers, got {len(value)}")
    for s in value:
        if "\x00" in s:
            raise ValueError(f"{name} may not contain NUL characters, got {s!r}")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{name} must be valid Unicode text (no lone surrogates), got {s!r}") from None
    return tuple(value)


def _bool_field(name: str, value: Any) -> bool:
    """A flag: true/false, 1/0 (what JSON ``true`` becomes in ``vllm_xargs``) or their strings."""
    if isinstance(value, bool):
        return value
    if _is_int(value) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError(f"{name} must be true or false (or 1 / 0), got {value!r}")


def _token_ids_field(name: str, value: Any, most: int) -> frozenset[int]:
    raw = value
    if isinstance(value, str):
        try:
            value = _json(name, value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, list | tuple) or not all(_is_int(v) and 0 <= v < 2**31 for v in value):
        raise ValueError(f"{name} must be a list of token ids (integers in [0, 2**31)), got {raw!r}")
    if len(value) > most:
        raise ValueError(f"{name} may hold at most {most} token ids, got {len(value)}")
    return frozenset(int(v) for v in value)


def parse_ngram(extra_args: Mapping[str, Any] | None) -> NgramParams | None:
    """Parse ``no_repeat_ngram_size`` (integer >= 1; absent or None = off),
    ``no_repeat_ngram_window`` (0 = the whole context) and
    ``no_repeat_ngram_whitelist`` (token ids that may repeat)."""
    args = _args(extra_args)
    value = _get(args, "no_repeat_ngram_size")
    window = _get(args, "no_repeat_ngram_window")
    whitelist = _get(args, "no_repeat_ngram_whitelist")
    kwargs: dict[str, Any] = {}
    if window is not _MISSING:
        kwargs["window"] = _int_field("no_repeat_ngram_window", window, 0)
    if whitelist is not _MISSING:
        kwargs["whitelist"] = _token_ids_field("no_repeat_ngram_whitelist", whitelist, MAX_NGRAM_WHITELIST)
    if value is _MISSING:
        if kwargs:
            raise ValueError(f"{', '.join(f'no_repeat_ngram_{k}' for k in kwargs)} is set but "
                             "no_repeat_ngram_size is needed too")
        return None
    return NgramParams(size=_int_field("no_repeat_ngram_size", value, 1), **kwargs)


def parse_dry(extra_args: Mapping[str, Any] | None) -> DryParams | None:
    """Parse the ``dry_*`` fields; DRY is on iff ``dry_multiplier`` > 0.

    All present ``dry_*`` fields are validated even when DRY is off, so a typo
    in a value is reported rather than silently ignored.
    """
    args = _args(extra_args)
    kwargs: dict[str, Any] = {}

    multiplier = _get(args, "dry_multiplier")
    if multiplier is not _MISSING and (not _is_number(multiplier) or multiplier < 0):
        raise ValueError(f"dry_multiplier must be a number >= 0, got {multiplier!r}")

    base = _get(args, "dry_base")
    if base is not _MISSING:
        if not _is_number(base) or base < 1:
            raise ValueError(f"dry_base must be a number >= 1, got {base!r}")
        kwargs["base"] = float(base)

    allowed_length = _get(args, "dry_allowed_length")
    if allowed_length is not _MISSING:
        kwargs["allowed_length"] = _int_field("dry_allowed_length", allowed_length, 1)

    breakers = _get(args, "dry_sequence_breakers")
    if breakers is not _MISSING:
        kwargs["sequence_breakers"] = _breakers_field("dry_sequence_breakers", breakers)

    last_n = _get(args, "dry_penalty_last_n")
    if last_n is not _MISSING:
        kwargs["penalty_last_n"] = _int_field("dry_penalty_last_n", last_n, -1)

    if multiplier is _MISSING or multiplier == 0:
        return None
    return DryParams(multiplier=float(multiplier), **kwargs)


def parse_xtc(extra_args: Mapping[str, Any] | None) -> XtcParams | None:
    """Parse ``xtc_threshold``, ``xtc_probability``, ``xtc_eos_newline_guard``
    and ``xtc_under_greedy``.

    XTC is on iff ``xtc_probability`` > 0; ``xtc_threshold`` defaults to
    :data:`DEFAULT_XTC_THRESHOLD` (0.1, as llama.cpp and text-generation-webui),
    ``xtc_eos_newline_guard`` to true and ``xtc_under_greedy`` to false. Any of
    the others without ``xtc_probability`` is an error (it would do nothing).
    """
    args = _args(extra_args)
    threshold = _get(args, "xtc_threshold")
    probability = _get(args, "xtc_probability")
    flags = {}
    for field, key in (("eos_newline_guard", "xtc_eos_newline_guard"), ("under_greedy", "xtc_under_greedy")):
        value = _get(args, key)
        if value is not _MISSING:
            flags[field] = _bool_field(key, value)

    if threshold is not _MISSING and (
        not _is_number(threshold) or not MIN_XTC_THRESHOLD <= threshold <= 1
    ):
        raise ValueError(
            f"xtc_threshold must be a number in [{MIN_XTC_THRESHOLD}, 1], got {threshold!r}"
        )
    if probability is not _MISSING and (
        not _is_number(probability) or not 0 <= probability <= 1
    ):
        raise ValueError(
            f"xtc_probability must be a number in [0, 1], got {probability!r}"
        )

    if probability is _MISSING:
        given = [k for k in ("xtc_threshold", "xtc_eos_newline_guard", "xtc_under_greedy")
                 if _get(args, k) is not _MISSING]
        if not given:
            return None
        raise ValueError(f"{', '.join(given)} is set but xtc_probability is needed too")
    if probability == 0:
        return None
    if threshold is _MISSING:
        threshold = DEFAULT_XTC_THRESHOLD
    return XtcParams(threshold=float(threshold), probability=float(probability), **flags)
