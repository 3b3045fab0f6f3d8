"""vllm-plugin-samplers on a server with speculative decoding (V1 runner).

vLLM's V1 runner runs no logits-processor plugin when speculative decoding is
on. The samplers' front-end guard (``vllm_plugin_samplers.spec_guard``) must
turn a request asking for one into an HTTP 400 that says so, and the server
must keep serving. Its own server: the configuration differs from the shared one.
"""

from __future__ import annotations

import json
import re

import openai
import pytest

from vllm_plugin_core.testing.platform import needs_torch_native

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(
        needs_torch_native(),
        reason="this vLLM is a CUDA-only build, served here on torch-native, which refuses speculative "
               "decoding at start; the guard itself is checked on this version by "
               "packages/samplers/tests/test_front_end.py (vLLM's InputProcessor, real VllmConfig)",
    ),
]

SPEC = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
PROMPT = [7, 8, 9, 10, 7, 8, 9, 10, 7, 8, 9, 10, 7, 8]


@pytest.fixture(scope="module")
def spec_server(vllm_server_factory, tiny_causal_lm):
    return vllm_server_factory(tiny_causal_lm, ["--max-model-len", "256", "--max-num-seqs", "4",
                                                "--speculative-config", json.dumps(SPEC)],
                               served_model_name="tiny")


def complete(client, xargs=None):
    extra = {"ignore_eos": True, **({"vllm_xargs": xargs} if xargs else {})}
    return client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16, temperature=0, extra_body=extra)


def drafted_tokens(server) -> float:
    _, text = server.get("/metrics")
    found = re.findall(r"^vllm:spec_decode_num_draft_tokens_total\{[^}]*\} ([0-9.e+]+)$", str(text), re.M)
    return sum(float(x) for x in found)


def test_sampler_arguments_get_a_400_naming_them_and_the_server_keeps_serving(spec_server):
    client = openai.OpenAI(base_url=spec_server.base_url, api_key="unused", max_retries=0, timeout=120)
    assert complete(client).usage.completion_tokens == 16
    assert drafted_tokens(spec_server) > 0, "speculative decoding did not draft: the test proves nothing"
    for xargs, names in [({"dry_multiplier": 0.8}, "dry_multiplier"),
                         ({"xtc_probability": 0.5, "xtc_under_greedy": True, "no_repeat_ngram_size": 2},
                          "no_repeat_ngram_size, xtc_probability")]:
        with pytest.raises(openai.BadRequestError) as err:
            complete(client, xargs)
        msg = str(err.value)
        assert f"{names} cannot take effect" in msg and "speculative decoding" in msg, msg
    # arguments that switch nothing on, and other plugins' arguments, still pass
    assert complete(client, {"dry_multiplier": 0, "some_other_plugin_arg": 1}).usage.completion_tokens == 16
    # a greedy request runs no XTC unless xtc_under_greedy: nothing to refuse
    assert complete(client, {"xtc_probability": 0.5}).usage.completion_tokens == 16
    assert complete(client).usage.completion_tokens == 16
