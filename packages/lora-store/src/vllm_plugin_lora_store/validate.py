"""Safety checks run before anything reaches the engine.

Every check raises :class:`AdapterRefused` with a short machine-readable
``reason`` (used to log each (adapter, reason) once) and a message that names
the adapter and what to do about it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import struct
import unicodedata
from dataclasses import dataclass
from typing import Any

from vllm_plugin_lora_store.patterns import MATCH_BUDGET_SECONDS, PatternBudget, PatternTooSlow, rank_matcher

__all__ = [
    "PICKLE_SUFFIXES",
    "AdapterRefused",
    "AdapterSummary",
    "check_base_model",
    "check_file_name",
    "check_name",
    "check_rank",
    "check_rank_pattern",
    "validate_adapter_dir",
]

MAX_NAME_LEN = 128
MAX_CONFIG_BYTES = 1 << 20
#: Default bound on a safetensors header (``MAX_HEADER_BYTES`` setting). A
#: LoRA header holds ~130 bytes per tensor (1 MiB: ~8000 tensors; all linear
#: layers of a 80-layer model: ~150 KB); ``json.loads`` holds the GIL while it
#: parses, ~35 ms per MiB here, so the bound is also a bound on that stall.
MAX_HEADER_BYTES = 1 << 20
MAX_TENSOR_KEY_CHARS = 512
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

#: safetensors dtypes and their element sizes in bits.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

_SAFE_CHARS = re.compile(r"[A-Za-z0-9._+@=,:~-]+")  # no '/', '\\', '%', spaces, controls


class AdapterRefused(Exception):
    """An adapter failed a check; ``reason`` is a short code, str() the full message."""

    def __init__(self, adapter: Any, reason: str, detail: str) -> None:
        shown = repr(adapter)
        if len(shown) > 80:
            shown = shown[:76] + "...'"
        self.adapter = shown if not isinstance(adapter, str) or len(adapter) > 80 else adapter
        self.reason = reason
        self.detail = detail
        super().__init__(f"LoRA adapter {shown} refused ({reason}): {detail}")


@dataclass(frozen=True)
class AdapterSummary:
    """What the cache remembers of a validated adapter."""

    base_model: str | None
    rank: int
    size: int


def check_name(name: Any) -> str:
    """Refuse names that could address anything but ``<store>/<name>/``."""
    shown = name
    if not isinstance(name, str) or not name:
        raise AdapterRefused(shown, "bad-name", "the adapter name is empty")
    if len(name) > MAX_NAME_LEN:
        raise AdapterRefused(shown, "bad-name", f"the name is longer than {MAX_NAME_LEN} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in name):
        raise AdapterRefused(shown, "bad-name", "the name contains control or invisible characters")
    if unicodedata.normalize("NFKC", name) != name:
        raise AdapterRefused(shown, "bad-name", "the name is not in Unicode NFKC normal form")
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise AdapterRefused(shown, "bad-name", "the name contains a path separator")
    if name in (".", "..") or ".." in name:
        raise AdapterRefused(shown, "bad-name", "the name contains '..'")
    if os.path.isabs(name) or name.startswith("~"):
        raise AdapterRefused(shown, "bad-name", "the name is an absolute path")
    if "%" in name:
        raise AdapterRefused(shown, "bad-name", "the name contains percent-encoding")
    if not name.isascii() or not _SAFE_CHARS.fullmatch(name):
        raise AdapterRefused(
            shown, "bad-name", "the name must use only ASCII letters, digits and . _ + @ = , : ~ -"
        )
    if name.startswith(".") or name.startswith("-"):
        raise AdapterRefused(shown, "bad-name", "the name must not start with '.' or '-'")
    return name


def check_file_name(adapter: str, file_name: str) -> None:
    """A file inside an adapter folder: one safe path component."""
    try:
        check_name(file_name)
    except AdapterRefused as exc:
        raise AdapterRefused(adapter, "bad-file-name", f"file {file_name!r}: {exc.detail}") from None


def check_base_model(adapter: str, adapter_base: str | None, served: str | None) -> None:
    """The adapter's ``base_model_name_or_path`` must name the served model.

    vLLM passes its ``--model`` (a path or hub id); equal strings match, and so
    do equal last path components (``/models/llama`` vs ``org/llama``).
    """
    if served is None:
        return
    if not adapter_base:
        raise AdapterRefused(
            adapter, "base-model",
            f"adapter_config.json has no base_model_name_or_path; the server serves {served!r} "
            "(set VLLM_PLUGIN_LORA_STORE_SKIP_BASE_MODEL_CHECK=1 to skip this check)",
        )
    if adapter_base == served:
        return
    a = os.path.basename(adapter_base.rstrip("/\\"))
    s = os.path.basename(served.rstrip("/\\"))
    if a and a == s:
        return
    raise AdapterRefused(
        adapter, "base-model",
        f"it was trained for {adapter_base!r} but the server serves {served!r} "
        "(set VLLM_PLUGIN_LORA_STORE_SKIP_BASE_MODEL_CHECK=1 to skip this check)",
    )


def check_rank(adapter: str, rank: int, max_rank: int | None) -> None:
    if max_rank is not None and rank > max_rank:
        raise AdapterRefused(
            adapter, "rank",
            f"its rank {rank} exceeds the server's max LoRA rank {max_rank} "
            "(start vLLM with a larger --max-lora-rank and set VLLM_PLUGIN_LORA_STORE_MAX_LORA_RANK to match)",
        )


def _load_config(adapter: str, path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise AdapterRefused(adapter, "missing-config", "it has no adapter_config.json")
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise AdapterRefused(adapter, "bad-config", "adapter_config.json is larger than 1 MiB")
    try:
        with open(path, "rb") as f:
            config = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterRefused(adapter, "bad-config", f"adapter_config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterRefused(adapter, "bad-config", "adapter_config.json is not a JSON object")
    return config


def _module_matcher(adapter: str, target_modules: Any, budget: PatternBudget):
    """PEFT semantics: a string is a regex on the full module name (run under
    ``budget``, never Python's ``re``); a list matches the module name or its
    last dotted components."""
    if isinstance(target_modules, str):
        try:
            pattern = budget.compile(target_modules)
        except ValueError as exc:
            raise AdapterRefused(adapter, "bad-config", f"target_modules is not a valid regex: {exc}") from None
        return lambda module: budget.fullmatch(pattern, module)
    if (
        isinstance(target_modules, list)
        and target_modules
        and all(isinstance(t, str) and t for t in target_modules)
    ):
        targets = set(target_modules)
        return lambda module: module in targets or any(module.endswith("." + t) for t in targets)
    raise AdapterRefused(adapter, "bad-config", "target_modules must be a non-empty list of names or a regex")


def check_rank_pattern(adapter: str, rank_pattern: Any) -> dict[str, int]:
    """``rank_pattern`` maps keys to positive integers (``64.0`` and ``true`` are refused)."""
    if rank_pattern is None:
        return {}
    if not isinstance(rank_pattern, dict):
        raise AdapterRefused(adapter, "bad-config", "rank_pattern must be an object")
    for key, value in rank_pattern.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise AdapterRefused(
                adapter, "bad-config", f"rank_pattern[{key!r}]={value!r} is not a positive integer"
            )
    return rank_pattern


def read_safetensors_header(
    adapter: str, path: str, max_header_bytes: int = MAX_HEADER_BYTES
) -> tuple[dict[str, Any], int]:
    """Return ``(header, data_bytes)``; refuse anything malformed."""
    size = os.path.getsize(path)
    name = os.path.basename(path)
    if size < 8:
        raise AdapterRefused(adapter, "bad-safetensors", f"{name} is shorter than 8 bytes")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > max_header_bytes:
            raise AdapterRefused(
                adapter, "bad-safetensors",
                f"{name} declares a header of {n} bytes, more than {max_header_bytes} "
                "(VLLM_PLUGIN_LORA_STORE_MAX_HEADER_BYTES)",
            )
        if n == 0 or n > size - 8:
            raise AdapterRefused(
                adapter, "bad-safetensors", f"{name} declares a header of {n} bytes in a {size}-byte file"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterRefused(adapter, "bad-safetensors", f"{name} has a header that is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise AdapterRefused(adapter, "bad-safetensors", f"{name} has a header that is not a JSON object")
    return header, size - 8 - n


def _check_tensor_entry(adapter: str, key: str, entry: Any, data_bytes: int) -> list[int]:
    if not isinstance(entry, dict):
        raise AdapterRefused(adapter, "bad-safetensors", f"tensor {key!r} has no description")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise AdapterRefused(adapter, "bad-safetensors", f"tensor {key!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise AdapterRefused(adapter, "bad-safetensors", f"tensor {key!r} has a bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        raise AdapterRefused(
            adapter, "bad-safetensors",
            f"tensor {key!r} has data offsets {offsets!r} outside the file's {data_bytes} data bytes",
        )
    count = 1
    for d in shape:
        count *= d
    if (count * DTYPE_BITS[dtype] + 7) // 8 != offsets[1] - offsets[0]:
        raise AdapterRefused(
            adapter, "bad-safetensors",
            f"tensor {key!r} ({dtype} {shape}) does not match its {offsets[1] - offsets[0]} data bytes",
        )
    return shape


_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_]+)?\.weight")


def validate_weights(
    adapter: str,
    path: str,
    config: dict[str, Any],
    rank: int,
    *,
    max_header_bytes: int = MAX_HEADER_BYTES,
    match_budget: float = MATCH_BUDGET_SECONDS,
) -> None:
    """Check the safetensors header against the adapter's config."""
    header, data_bytes = read_safetensors_header(adapter, path, max_header_bytes)
    rank_pattern = check_rank_pattern(adapter, config.get("rank_pattern"))
    try:
        _validate_tensors(adapter, header, data_bytes, config, rank, rank_pattern, PatternBudget(match_budget))
    except PatternTooSlow:
        raise AdapterRefused(
            adapter, "bad-config",
            f"matching its target_modules / rank_pattern against its modules took more than "
            f"{match_budget * 1000:g} ms (a pattern that backtracks; write plain names)",
        ) from None


def _validate_tensors(
    adapter: str,
    header: dict[str, Any],
    data_bytes: int,
    config: dict[str, Any],
    rank: int,
    rank_pattern: dict[str, int],
    budget: PatternBudget,
) -> None:
    matches = _module_matcher(adapter, config.get("target_modules"), budget)
    try:
        rank_index = rank_matcher(budget, rank_pattern)
    except ValueError as exc:
        raise AdapterRefused(adapter, "bad-config", str(exc)) from None
    ranks = list(rank_pattern.values())
    seen: dict[str, int] = {}
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise AdapterRefused(adapter, "bad-safetensors", "__metadata__ must map strings to strings")
    if not header:
        raise AdapterRefused(adapter, "bad-safetensors", "adapter_model.safetensors holds no tensors")
    spans = []
    for key, entry in header.items():
        if len(key) > MAX_TENSOR_KEY_CHARS:
            raise AdapterRefused(adapter, "bad-weights", f"a tensor name is longer than {MAX_TENSOR_KEY_CHARS} characters")
        shape = _check_tensor_entry(adapter, key, entry, data_bytes)
        spans.append(tuple(entry["data_offsets"]))
        m = _LORA_KEY.fullmatch(key)
        if m is None:
            raise AdapterRefused(adapter, "bad-weights", f"tensor {key!r} is not a lora_A/lora_B weight")
        module = m.group("module")
        if module.startswith("base_model.model."):
            module = module[len("base_model.model."):]
        if len(shape) != 2:
            raise AdapterRefused(adapter, "bad-weights", f"tensor {key!r} has {len(shape)} dimensions, not 2")
        expected = seen.get(module)
        if expected is None:  # each module's patterns run once (its A and B share them)
            if not matches(module):
                raise AdapterRefused(
                    adapter, "bad-weights", f"tensor {key!r} is for module {module!r}, not one of target_modules"
                )
            i = rank_index(module)
            expected = seen[module] = rank if i is None else ranks[i]
        if m.group("ab") == "A" and shape[0] != expected:
            raise AdapterRefused(adapter, "bad-weights", f"lora_A {key!r} has {shape[0]} rows, not rank {expected}")
        if m.group("ab") == "B" and shape[1] != expected:
            raise AdapterRefused(adapter, "bad-weights", f"lora_B {key!r} has {shape[1]} columns, not rank {expected}")
    # as safetensors itself requires: the tensors tile the data section exactly
    spans.sort()
    if spans[0][0] != 0:
        raise AdapterRefused(adapter, "bad-safetensors", f"the data section starts with {spans[0][0]} unused bytes")
    for (_b0, e0), (b1, _) in itertools.pairwise(spans):
        if b1 < e0:
            raise AdapterRefused(adapter, "bad-safetensors", "tensors overlap in the data section")
        if b1 > e0:
            raise AdapterRefused(adapter, "bad-safetensors", f"the data section has {b1 - e0} unused bytes at {e0}")
    if spans[-1][1] != data_bytes:
        raise AdapterRefused(
            adapter, "bad-safetensors", f"{data_bytes - spans[-1][1]} trailing bytes follow the last tensor"
        )


def validate_adapter_dir(
    adapter: str,
    path: str,
    *,
    allow_pickle: bool = False,
    max_header_bytes: int = MAX_HEADER_BYTES,
    match_budget: float = MATCH_BUDGET_SECONDS,
) -> AdapterSummary:
    """Validate a complete local adapter folder (config, weights, pickle).

    Base-model and rank checks depend on the server, so they are separate
    (:func:`check_base_model`, :func:`check_rank`) and use the summary.
    """
    config = _load_config(adapter, os.path.join(path, "adapter_config.json"))
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise AdapterRefused(adapter, "peft-type", f"its peft_type is {peft_type!r}, not 'LORA'")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise AdapterRefused(adapter, "bad-config", f"its rank r={rank!r} is not a positive integer")
    ranks = [rank, *check_rank_pattern(adapter, config.get("rank_pattern")).values()]
    files = os.listdir(path)
    pickles = sorted(f for f in files if f.lower().endswith(PICKLE_SUFFIXES))
    weights = os.path.join(path, "adapter_model.safetensors")
    if os.path.isfile(weights):
        validate_weights(
            adapter, weights, config, rank, max_header_bytes=max_header_bytes, match_budget=match_budget
        )
    elif pickles:
        if not allow_pickle:
            raise AdapterRefused(
                adapter, "pickle",
                f"its weights are pickle files ({', '.join(pickles)}), which can run code when loaded "
                "(convert them to adapter_model.safetensors, or set VLLM_PLUGIN_LORA_STORE_ALLOW_PICKLE=1)",
            )
    else:
        raise AdapterRefused(adapter, "missing-weights", "it has no adapter_model.safetensors")
    if pickles and not allow_pickle:
        raise AdapterRefused(
            adapter, "pickle",
            f"it contains pickle files ({', '.join(pickles)}) "
            "(remove them, or set VLLM_PLUGIN_LORA_STORE_ALLOW_PICKLE=1)",
        )
    size = sum(os.path.getsize(os.path.join(path, f)) for f in files)
    base = config.get("base_model_name_or_path")
    return AdapterSummary(base_model=base if isinstance(base, str) else None, rank=max(ranks), size=size)
