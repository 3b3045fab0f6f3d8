"""Sampler arguments are refused, not ignored, where speculative decoding on
vLLM's V1 runner runs no logits-processor plugin.

The in-process check drives vLLM's own loader (``load_general_plugins``) and
its real ``InputProcessor`` on a real ``VllmConfig``; the served check, with
``vllm serve --speculative-config``, is in ``tests/test_served_samplers_spec.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_runner_interfaces import needs_v1

from vllm_plugin_samplers.front_end import active_sampler_args, refusal

SCRIPT = r"""
import json, sys
from vllm.plugins import load_general_plugins
load_general_plugins()  # vLLM's loader runs the samplers' general-plugin entry point
from vllm import SamplingParams
from vllm.config import SpeculativeConfig
from vllm.engine.arg_utils import EngineArgs
from vllm_plugin_core import compat

cfg = EngineArgs(model=sys.argv[1], max_model_len=256).create_engine_config()
out = {}
for spec in (False, True):
    if spec:
        # Attached after the platform check: torch-native (the only platform
        # of a CUDA-only vLLM here) refuses speculative decoding at start.
        cfg.speculative_config = SpeculativeConfig(
            method="ngram", num_speculative_tokens=2, prompt_lookup_max=3, prompt_lookup_min=1,
            target_model_config=cfg.model_config, target_parallel_config=cfg.parallel_config)
    ip = compat.input_processor_class()(cfg)
    for name, extra in [("plain", None), ("other-plugin", {"my_arg": 1}), ("dry-off", {"dry_multiplier": 0}),
                        ("samplers", {"dry_multiplier": 0.8, "xtc_probability": 0.5, "no_repeat_ngram_size": 3})]:
        try:
            ip._validate_params(SamplingParams(max_tokens=4, extra_args=extra), ("generate",))
            out[f"{spec}-{name}"] = "accepted"
        except Exception as e:  # noqa: BLE001 - the type is part of the result
            out[f"{spec}-{name}"] = f"{type(e).__name__}: {e}"
print("RESULT" + json.dumps(out))
"""


def run_validation(model, **env) -> dict[str, str]:
    from vllm_plugin_core.testing.platform import engine_env

    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(model)],
                          env={**os.environ, **engine_env(), **env}, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT"):])


def test_active_sampler_args_names_what_switches_a_sampler_on():
    assert active_sampler_args(None) == []
    assert active_sampler_args({"dry_multiplier": 0, "xtc_threshold": None, "other": 3}) == []
    assert active_sampler_args({"dry_multiplier": 0.5, "xtc_probability": 1, "no_repeat_ngram_size": 2}) == [
        "no_repeat_ngram_size", "dry_multiplier", "xtc_probability"]
    with pytest.raises(ValueError, match="dry_base"):
        active_sampler_args({"dry_multiplier": 0.5, "dry_base": 0.5})
    assert "remove it" in refusal("why", ["dry_multiplier"])


def test_xtc_under_greedy_decoding_is_not_a_sampler_that_takes_effect():
    """Greedy requests run no XTC unless ``xtc_under_greedy``: nothing to refuse."""
    from vllm import SamplingParams

    from vllm_plugin_samplers.front_end import is_greedy

    assert is_greedy(SamplingParams(temperature=0.0)) and not is_greedy(SamplingParams(temperature=0.7))
    assert not is_greedy(object())  # pooling requests have no temperature
    assert active_sampler_args({"xtc_probability": 1}, greedy=True) == []
    assert active_sampler_args({"xtc_probability": 1, "xtc_under_greedy": True}, greedy=True) == ["xtc_probability"]
    assert active_sampler_args({"xtc_probability": 1, "dry_multiplier": 1}, greedy=True) == ["dry_multiplier"]


@needs_v1
def test_v1_refuses_sampler_arguments_only_under_speculative_decoding(tiny_causal_lm):
    got = run_validation(tiny_causal_lm, VLLM_USE_V2_MODEL_RUNNER="0")
    without = {k: v for k, v in got.items() if k.startswith("False-")}
    assert set(without.values()) == {"accepted"}, without
    assert got["True-plain"] == got["True-other-plugin"] == got["True-dry-off"] == "accepted"
    msg = got["True-samplers"]
    # vLLM's client error (HTTP 400), not a plain ValueError (HTTP 500)
    assert msg.startswith("VLLMValidationError: no_repeat_ngram_size, dry_multiplier, xtc_probability "
                          "cannot take effect"), msg
    assert "speculative decoding" in msg and "remove them" in msg


BREAKERS_SCRIPT = r"""
import json, sys
from vllm.plugins import load_general_plugins
load_general_plugins()
from vllm import SamplingParams
from vllm.engine.arg_utils import EngineArgs
from vllm_plugin_core import compat
from vllm_plugin_samplers.breakers import WIRE_KEY, load_resolver

cfg = EngineArgs(model=sys.argv[1], max_model_len=256).create_engine_config()
ip = compat.input_processor_class()(cfg)
mc = cfg.model_config
engine_side = load_resolver(str(mc.tokenizer), bool(mc.trust_remote_code), None)  # as the engine loads it
custom = {"dry_multiplier": 0.8, "dry_sequence_breakers": ["the", "\n"]}
want = engine_side.wire(("the", "\n"))
out = {"tails": len(want["tails"]), "single": len(want["single"])}

def validated(extra):
    sp = SamplingParams(max_tokens=4, extra_args=extra)
    try:
        ip._validate_params(sp, ("generate",))
    except Exception as e:  # noqa: BLE001 - the type is part of the result
        return f"{type(e).__name__}: {e}"
    return sp.extra_args

got = validated(custom)
out["custom"] = got[WIRE_KEY] == want and WIRE_KEY not in custom
forged = {"breakers": ["the", "\n"], "single": [0], "tails": []}
out["forged"] = validated({**custom, WIRE_KEY: forged})[WIRE_KEY] == want
got = validated({"dry_multiplier": 0.8, WIRE_KEY: forged, "other": 1})
out["default"] = sorted(got)
out["too_many"] = validated({"dry_multiplier": 0.8, "dry_sequence_breakers": [str(i) for i in range(40)]})
print("RESULT" + json.dumps(out))
"""


@pytest.mark.engine  # builds an engine config: needs a platform that starts on this vLLM
def test_custom_breakers_are_resolved_in_the_front_end(tiny_causal_lm):
    """vLLM's own loader and InputProcessor: a custom breaker set leaves the
    front end resolved (the same table the engine would build), a client's
    own table is replaced, the default set carries none, and a set too large
    to resolve cheaply is refused."""
    from vllm_plugin_core.testing.platform import engine_env

    proc = subprocess.run([sys.executable, "-c", BREAKERS_SCRIPT, str(tiny_causal_lm)],
                          env={**os.environ, **engine_env()}, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT"):])
    assert got["single"] > 0 and got["tails"] > 0, got  # "the" spans tokens here: a real table
    assert got["custom"] is True and got["forged"] is True, got
    assert got["default"] == ["dry_multiplier", "other"], got
    assert "at most 32 breakers" in got["too_many"], got
