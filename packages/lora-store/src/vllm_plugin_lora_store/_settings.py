"""Settings of vllm-plugin-lora-store (``VLLM_PLUGIN_LORA_STORE_*``).

Imports only core's settings module, so ``vllm-plugins doctor`` and core's
general plugin can read it without importing vLLM or boto3.
"""

from __future__ import annotations

import os
import re

from vllm_plugin_core.settings import Setting, Settings

GiB = 1 << 30

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 1 << 10,
    "m": 10**6, "mb": 10**6, "mib": 1 << 20,
    "g": 10**9, "gb": 10**9, "gib": 1 << 30,
    "t": 10**12, "tb": 10**12, "tib": 1 << 40,
}


def parse_bytes(raw: str) -> int:
    """``1073741824``, ``512MiB``, ``10GiB``, ``2GB`` -> bytes (must be > 0)."""
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", raw)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError("expected a byte count such as 1073741824, 512MiB or 10GiB")
    value = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise ValueError("must be > 0")
    return value


class CredentialsInURI(Exception):
    """A store URI carries ``user:pass@``. Not a ``ValueError`` on purpose:
    core's settings would echo the raw value (the secret) in its message."""


def redact_uri(uri: str) -> str:
    """``s3://user:pass@bucket/x`` -> ``s3://***@bucket/x`` (anything else unchanged)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        return f"{scheme}://***@{netloc.rsplit('@', 1)[1]}{slash}{path}"
    return uri


def check_uri(uri: str) -> None:
    if redact_uri(uri) != uri:
        raise CredentialsInURI(
            f"VLLM_PLUGIN_LORA_STORE_URI={redact_uri(uri)!r} is not valid: it carries credentials "
            "(user:pass@); give them through the AWS SDK's chain (AWS_ACCESS_KEY_ID, profiles, roles)"
        )
    if uri.startswith("s3://"):
        if not uri[5:].split("/", 1)[0]:
            raise ValueError("s3:// needs a bucket: s3://bucket or s3://bucket/prefix")
        return
    if uri.startswith("file://"):
        path = uri[7:]
        if not path.startswith("/"):
            raise ValueError("file:// URLs must be absolute: file:///srv/adapters")
        return
    if "://" in uri:
        raise ValueError("only /path, file:///path and s3://bucket/prefix are supported")
    if not os.path.isabs(os.path.expanduser(uri)):
        raise ValueError("a directory must be an absolute path")


def _positive(value: int) -> None:
    if value <= 0:
        raise ValueError("must be > 0")


def _non_negative(value: float) -> None:
    if value < 0:
        raise ValueError("must be >= 0")


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/vllm-plugins/lora-store`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "vllm-plugins", "lora-store")


SETTINGS = Settings(
    "lora_store",
    [
        Setting(
            "URI",
            str,
            None,
            "Where adapters live: /path, file:///path or s3://bucket/prefix (adapter <name> is "
            "<store>/<name>/). Unset: the resolver is not registered.",
            check=check_uri,
            form="/path, file:///path or s3://bucket/prefix",
        ),
        Setting(
            "CACHE_DIR",
            str,
            None,
            "Local cache of fetched adapters (default $XDG_CACHE_HOME/vllm-plugins/lora-store, "
            "i.e. ~/.cache/vllm-plugins/lora-store).",
        ),
        Setting(
            "CACHE_MAX_BYTES",
            parse_bytes,
            10 * GiB,
            "Bound on the cache's size; least recently used adapters not in use are evicted.",
            form="a byte count such as 10737418240, 512MiB or 10GiB",
        ),
        Setting(
            "MAX_ADAPTER_BYTES",
            parse_bytes,
            2 * GiB,
            "Largest adapter (all its files together) accepted; larger ones are refused before download.",
            form="a byte count such as 2147483648, 512MiB or 2GiB",
        ),
        Setting(
            "ALLOW_PICKLE",
            bool,
            False,
            "Accept adapter_model.bin / .pt (pickle: can run code when loaded). Off: such files are "
            "never fetched, and an adapter without safetensors weights is refused.",
        ),
        Setting(
            "SKIP_BASE_MODEL_CHECK",
            bool,
            False,
            "Do not compare the adapter's base_model_name_or_path with the served model.",
        ),
        Setting(
            "MAX_LORA_RANK",
            int,
            None,
            "Refuse adapters whose rank exceeds this (set it to the server's --max-lora-rank; a "
            "resolver cannot read the engine's config). Unset: not checked here (the engine still "
            "rejects them when loading).",
            check=_positive,
            form="an integer > 0 such as 8",
        ),
        Setting(
            "IN_USE_SECONDS",
            float,
            0.0,
            "How long an adapter counts as in use (never evicted) after it was last resolved; "
            "0: for the life of the process (safe: vLLM may re-read the files at any time).",
            check=_non_negative,
            form="a number of seconds >= 0 such as 3600",
        ),
        Setting(
            "MAX_HEADER_BYTES",
            parse_bytes,
            1 << 20,
            "Largest safetensors header accepted (JSON parsed in a worker thread, ~35 ms per MiB "
            "holding the GIL); 1 MiB holds ~8000 tensors.",
            form="a byte count such as 1048576 or 4MiB",
        ),
        Setting(
            "NEGATIVE_TTL_SECONDS",
            float,
            300.0,
            "How long a refusal, a miss (name not in the store) or a failed fetch is remembered: "
            "requests for that name meanwhile cost no listing and no download. After it, a refused "
            "adapter whose listing is unchanged (same ETags / mtimes) is refused without a download.",
            check=_non_negative,
            form="a number of seconds >= 0 such as 300",
        ),
        Setting(
            "FETCH_DEADLINE_SECONDS",
            float,
            300.0,
            "Total time one adapter's listing, download and checks may take; past it the resolver "
            "answers None (one WARNING) and the fetch is abandoned.",
            check=_positive,
            form="a number of seconds > 0 such as 300",
        ),
        Setting(
            "READ_TIMEOUT_SECONDS",
            float,
            20.0,
            "Longest wait for any single read from the store (connect, or the next bytes of a body).",
            check=_positive,
            form="a number of seconds > 0 such as 20",
        ),
        Setting(
            "FETCH_THREADS",
            int,
            4,
            "Size of the resolver's own thread pool for listings and downloads (not vLLM's default pool).",
            check=_positive,
            form="an integer > 0 such as 4",
        ),
        Setting(
            "PINNED",
            list,
            [],
            "Adapter names never evicted from the cache.",
        ),
    ],
)
