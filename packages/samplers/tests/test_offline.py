"""The samplers in a real offline vLLM ``LLM``, loaded by vLLM's own entry-point
loader, against independent references run on the same model with transformers.

One engine for the whole module. ``max_num_seqs=4`` with more requests than
that makes requests join, leave and move in the persistent batch while others
are still decoding, so ``update_state`` sees every kind of batch change.
"""

from __future__ import annotations

import random

import pytest
import torch
from reference import dry_penalty, greedy, ngram_banned, xtc_remove

pytestmark = pytest.mark.engine

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def llm(vllm_llm_factory, tiny_causal_lm):
    return vllm_llm_factory(tiny_causal_lm, max_num_seqs=4, enable_prefix_caching=True)


@pytest.fixture(scope="module")
def hf(tiny_causal_lm):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(1234)
    out = []
    for _ in range(12):
        base = [rng.randrange(3, 500) for _ in range(rng.randrange(3, 12))]
        # Repeat part of the prompt so repetition penalties have something to find.
        out.append(base + base[: rng.randrange(2, len(base) + 1)])
    return out


def generate(llm, prompts, extra_args, **kw):
    from vllm import SamplingParams

    params = [SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, extra_args=ea, ignore_eos=True, **kw)
              for ea in extra_args]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.mark.parametrize("name", ["no_repeat_ngram", "dry", "xtc"])
def test_discovered_by_vllms_loader(assert_entry_point_discovered, name):
    cls = assert_entry_point_discovered("vllm.logits_processors", name)
    assert cls.__vllm_plugin_name__ == name
    assert cls.is_argmax_invariant(cls.__new__(cls)) is False  # all three change greedy choices


def test_mixed_batch_ngram_and_plain(llm, hf, prompts):
    """Requests with n = 1, 2, 3 and with no arguments, in one batch."""
    sizes = [None, 1, 2, 3] * 3
    args = [None if n is None else {"no_repeat_ngram_size": n} for n in sizes]
    got = generate(llm, prompts, args)
    changed = 0
    for prompt, n, tokens in zip(prompts, sizes, got, strict=True):
        if n is None:
            # Without arguments: exactly what plain greedy decoding gives.
            assert tokens == greedy(hf, prompt, MAX_TOKENS)
            continue
        ctx = list(prompt)
        for tok in tokens:  # never completes an n-gram already present
            assert tok not in ngram_banned(ctx, n), (n, ctx, tok)
            ctx.append(tok)
        expected = greedy(hf, prompt, MAX_TOKENS,
                          lambda lg, c, n=n: lg.index_fill(0, torch.tensor(sorted(ngram_banned(c, n)) or [0]),
                                                           float("-inf")) if ngram_banned(c, n) else lg)
        assert tokens == expected
        changed += tokens != greedy(hf, prompt, MAX_TOKENS)
    assert changed >= 3, "the n-gram ban should change several outputs of this random model"


def test_ngram_banned_sets_equal_transformers():
    """Differential test of the per-step banned sets against transformers."""
    from transformers import NoRepeatNGramLogitsProcessor

    from vllm_plugin_samplers.params import NgramParams
    from vllm_plugin_samplers.processors import Context, NgramState

    rng = random.Random(7)
    for _ in range(60):
        n = rng.randrange(1, 5)
        seq = [rng.randrange(6) for _ in range(rng.randrange(1, 40))]
        state = NgramState(NgramParams(n))
        for cut in range(1, len(seq) + 1):
            row = torch.zeros(6)
            state.apply(row, Context(seq[:cut], []))
            hf_row = NoRepeatNGramLogitsProcessor(n)(torch.tensor([seq[:cut]]), torch.zeros(1, 6))[0]
            assert torch.equal(torch.isinf(row), torch.isinf(hf_row)), (n, seq[:cut])


def test_dry_against_reference(llm, hf, prompts):
    settings = [
        {"dry_multiplier": 2.0},
        {"dry_multiplier": 0.8, "dry_base": 2.0, "dry_allowed_length": 1},
        None,
        {"dry_multiplier": 5.0, "dry_allowed_length": 3, "dry_penalty_last_n": 8},
    ] * 3
    got = generate(llm, prompts, settings)
    changed = 0
    for prompt, ea, tokens in zip(prompts, settings, got, strict=True):
        if ea is None:
            assert tokens == greedy(hf, prompt, MAX_TOKENS)
            continue
        mult, base = ea["dry_multiplier"], ea.get("dry_base", 1.75)
        allowed, last_n = ea.get("dry_allowed_length", 2), ea.get("dry_penalty_last_n", 0)
        # Random token ids are never the default breakers' tokens here except by chance;
        # the processor resolves breakers through the tokenizer, so do the same.
        from vllm_plugin_samplers.processors import _breakers

        breakers = set(_breakers(str(llm.llm_engine.model_config.tokenizer), False, None,
                                 ("\n", ":", '"', "*")))

        def edit(lg, c, mult=mult, base=base, allowed=allowed, last_n=last_n, breakers=breakers):
            lg = lg.clone()
            for tok, pen in dry_penalty(c, mult, base, allowed, breakers, last_n).items():
                lg[tok] -= pen
            return lg

        expected = greedy(hf, prompt, MAX_TOKENS, edit)
        assert tokens == expected, ea
        changed += tokens != greedy(hf, prompt, MAX_TOKENS)
    assert changed >= 3


def test_xtc_against_reference_and_seeded(llm, hf, prompts):
    settings = [{"xtc_threshold": 0.1, "xtc_probability": 1.0}, None,
                {"xtc_threshold": 0.05, "xtc_probability": 1.0}] * 4
    got = generate(llm, prompts, settings)
    for prompt, ea, tokens in zip(prompts, settings, got, strict=True):
        if ea is None:
            assert tokens == greedy(hf, prompt, MAX_TOKENS)
        else:
            assert tokens == greedy(hf, prompt, MAX_TOKENS,
                                    lambda lg, c, t=ea["xtc_threshold"]: xtc_remove(lg, t))
    # With probability 0.5 the per-step draws follow the request's seed.
    half = [{"xtc_threshold": 0.05, "xtc_probability": 0.5}] * 4
    a = generate(llm, prompts[:4], half, seed=11)
    b = generate(llm, prompts[:4], half, seed=11)
    c = generate(llm, prompts[:4], half, seed=12)
    assert a == b
    assert a != c


@pytest.mark.parametrize(("extra", "message"), [
    ({"no_repeat_ngram_size": 0}, "no_repeat_ngram_size"),
    ({"no_repeat_ngram_size": "3"}, "no_repeat_ngram_size"),
    ({"dry_multiplier": 1.0, "dry_base": 0.5}, "dry_base"),
    ({"dry_multiplier": 1.0, "dry_sequence_breakers": [1, 2]}, "dry_sequence_breakers"),
    ({"xtc_threshold": 0.9, "xtc_probability": 1.0}, "xtc_threshold"),
    ({"xtc_threshold": 0.1, "xtc_probability": 2}, "xtc_probability"),
])
def test_bad_arguments_rejected_engine_alive(llm, extra, message):
    from vllm import SamplingParams

    # ValueError, or VLLMValidationError (what the server turns into HTTP 400) where vLLM has it.
    with pytest.raises(Exception, match=message) as err:
        llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(max_tokens=2, extra_args=extra),
                     use_tqdm=False)
    assert isinstance(err.value, ValueError) or type(err.value).__name__ == "VLLMValidationError"
    out = llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(max_tokens=2), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 2
