"""Check one installed plugin distribution through vLLM's own loader.

    python install_alone_check.py DISTRIBUTION

Run with the Python of a venv holding vLLM, the plugin and vllm-plugin-core
only (the ``install_alone`` nox session makes one per plugin). It checks:

1. vLLM's loader finds every entry point the distribution declares in a
   ``vllm.*`` group: ``_load_logitsprocs_plugins()`` for
   ``vllm.logits_processors``, ``vllm.plugins.load_plugins_by_group`` for the
   other groups;
2. the distribution's smallest end-to-end check, from ``CHECKS`` below.
   A new plugin adds one entry there; one without an entry gets the loader
   check only.

Starts no engine. Exit status 0 when every check passes.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOGITSPROCS_GROUP = "vllm.logits_processors"


def _fqcn(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def load_with_vllm(dist: str) -> dict[str, dict[str, Any]]:
    """{group: {entry point name: what vLLM's loader loaded}} for the ``vllm.*``
    entry points of ``dist``; raises AssertionError if the loader misses one."""
    eps = [ep for ep in md.distribution(dist).entry_points if ep.group.startswith("vllm.")]
    assert eps, f"{dist} declares no entry point in a vllm.* group"
    loaded: dict[str, dict[str, Any]] = {}
    for group in sorted({ep.group for ep in eps}):
        ours = [ep for ep in eps if ep.group == group]
        if group == LOGITSPROCS_GROUP:
            from vllm.v1.sample.logits_processor import _load_logitsprocs_plugins

            by_value = {_fqcn(cls): cls for cls in _load_logitsprocs_plugins()}
            found = {ep.name: by_value.get(ep.value) for ep in ours}
        else:
            from vllm.plugins import load_plugins_by_group

            plugins = load_plugins_by_group(group)
            found = {ep.name: plugins.get(ep.name) for ep in ours}
        missing = sorted(name for name, obj in found.items() if obj is None)
        assert not missing, f"vLLM's loader did not load {group} entry points {missing} of {dist}"
        loaded[group] = found
        print(f"  loader: {group}: {', '.join(sorted(found))}")
    return loaded


# --------------------------------------------------------------------- checks

#: Per logits processor entry point: (accepted extra_args, rejected extra_args).
SAMPLER_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "no_repeat_ngram": ({"no_repeat_ngram_size": 3}, {"no_repeat_ngram_size": 0}),
    "dry": ({"dry_multiplier": 0.8, "dry_base": 1.75}, {"dry_multiplier": -1}),
    "xtc": ({"xtc_threshold": 0.1, "xtc_probability": 0.5}, {"xtc_threshold": 1.5, "xtc_probability": 0.5}),
}


def check_samplers(loaded: dict[str, dict[str, Any]], tmp: Path) -> None:
    from vllm import SamplingParams

    classes = loaded[LOGITSPROCS_GROUP]
    assert set(classes) == set(SAMPLER_CASES), \
        f"entry points {sorted(classes)} != the cases of this check {sorted(SAMPLER_CASES)}"
    for name, cls in classes.items():
        good, bad = SAMPLER_CASES[name]
        cls.validate_params(SamplingParams(extra_args=good))
        try:
            cls.validate_params(SamplingParams(extra_args=bad))
        except ValueError as exc:
            print(f"  {name}: accepts {good}; rejects {bad}: {exc}")
        else:
            raise AssertionError(f"{name}.validate_params accepted bad extra_args {bad}")


def check_stats(loaded: dict[str, dict[str, Any]], tmp: Path) -> None:
    from vllm.config import VllmConfig

    path = Path(os.environ["VLLM_PLUGIN_STATS_PATH"])
    cls = loaded["vllm.stat_logger_plugins"]["jsonl"]
    logger = cls(VllmConfig())
    logger.log_engine_initialized()
    logger.close()
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    types = [r.get("type") for r in records]
    assert "start" in types and "stop" in types, f"{path} holds records {types}, want start and stop"
    print(f"  stats: {path.name} holds {types}")


#: distribution -> (environment to set before vLLM is imported, check).
CHECKS: dict[str, tuple[Callable[[Path], dict[str, str]], Callable[[dict[str, dict[str, Any]], Path], None]]] = {
    "vllm-plugin-samplers": (lambda tmp: {}, check_samplers),
    "vllm-plugin-stats": (lambda tmp: {"VLLM_PLUGIN_STATS_PATH": str(tmp / "s.jsonl")}, check_stats),
}


def main(dist: str) -> int:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="install-alone-") as d:
        tmp = Path(d)
        env, check = CHECKS.get(dist, (lambda tmp: {}, None))
        os.environ.update(env(tmp))
        loaded = load_with_vllm(dist)
        if check is None:
            print(f"  {dist}: no end-to-end check in CHECKS (loader check only)")
        else:
            check(loaded, tmp)
    print(f"install_alone_check {dist}: ok ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
