"""The samplers in a real offline vLLM ``LLM``, loaded by vLLM's own entry-point
loader, against independent references run on the same model with transformers.

One engine for the whole module. ``max_num_seqs=4`` with more requests than
that makes requests join, leave and move in the persistent batch while others
are still decoding, so ``update_state`` sees every kind of batch change;
``max_num_batched_tokens=32`` prefills long prompts in chunks, and a KV cache
of 768 tokens preempts long requests running together.
"""

from __future__ import annotations

import random

import pytest
import torch
from reference import dry_penalty, greedy, ngram_banned, xtc_remove
from test_runner_interfaces import needs_v1

pytestmark = pytest.mark.engine

MAX_TOKENS = 24
KV_TOKENS = 768  # tokens of KV cache (2 layers x K,V x 2 heads x 64 x float32 each)


@pytest.fixture(scope="module")
def llm(vllm_llm_factory, tiny_causal_lm):
    return vllm_llm_factory(tiny_causal_lm, max_num_seqs=4, enable_prefix_caching=True,
                            max_num_batched_tokens=32, kv_cache_memory_bytes=KV_TOKENS * 2 * 2 * 2 * 64 * 4,
                            disable_log_stats=False)  # preemption count from llm.get_metrics()


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


@needs_v1
def test_ngram_banned_sets_equal_transformers():
    """Differential test of the per-step banned sets against transformers,
    through the processor's V1 interface, one token appended per step."""
    from transformers import NoRepeatNGramLogitsProcessor
    from vllm import SamplingParams

    from vllm_plugin_core import compat
    from vllm_plugin_samplers.processors import NoRepeatNgramLogitsProcessor

    BatchUpdate, _ = compat.batch_update_types()
    rng = random.Random(7)
    for _ in range(60):
        n = rng.randrange(1, 5)
        seq = [rng.randrange(6) for _ in range(rng.randrange(1, 40))]
        proc = NoRepeatNgramLogitsProcessor(None, torch.device("cpu"), False)
        out: list[int] = []
        proc.update_state(BatchUpdate(batch_size=1, removed=[], moved=[], added=[
            (0, SamplingParams(extra_args={"no_repeat_ngram_size": n}), seq[:1], out)]))
        for cut in range(1, len(seq) + 1):
            if cut > 1:
                out.append(seq[cut - 1])
            row = proc.apply(torch.zeros(1, 6))[0]
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
        breakers = set(default_breakers(llm))

        def edit(lg, c, mult=mult, base=base, allowed=allowed, last_n=last_n, breakers=breakers):
            lg = lg.clone()
            for tok, pen in dry_penalty(c, mult, base, allowed, breakers, last_n).items():
                lg[tok] -= pen
            return lg

        expected = greedy(hf, prompt, MAX_TOKENS, edit)
        assert tokens == expected, ea
        changed += tokens != greedy(hf, prompt, MAX_TOKENS)
    assert changed >= 3


def default_breakers(llm):
    from vllm_plugin_samplers.breakers import load_resolver
    from vllm_plugin_samplers.params import DEFAULT_DRY_SEQUENCE_BREAKERS

    resolver = load_resolver(str(llm.llm_engine.model_config.tokenizer), False, None)
    return resolver(DEFAULT_DRY_SEQUENCE_BREAKERS).single


def xtc_guard(tiny_causal_lm) -> set[int]:
    """Written independently of the plugin: every token whose text holds a
    newline, and the EOS ids of the tokenizer and the generation config."""
    import json

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    ids = {i for i in range(len(tok)) if "\n" in tok.decode([i])}
    ids.add(tok.eos_token_id)
    gen = tiny_causal_lm / "generation_config.json"
    eos = json.loads(gen.read_text()).get("eos_token_id") if gen.exists() else None
    ids.update([eos] if isinstance(eos, int) else eos or [])
    return {i for i in ids if i is not None}


def test_xtc_against_reference_and_seeded(llm, hf, prompts, tiny_causal_lm):
    # Greedy requests (temperature 0, the reference's loop) run XTC only with xtc_under_greedy.
    on = {"xtc_probability": 1.0, "xtc_under_greedy": True}
    settings = [{"xtc_threshold": 0.1, **on}, None, {"xtc_threshold": 0.05, **on},
                {"xtc_threshold": 0.05, "xtc_probability": 1.0, "xtc_under_greedy": True,
                 "xtc_eos_newline_guard": False}] * 3
    guard = xtc_guard(tiny_causal_lm)
    got = generate(llm, prompts, settings)
    for prompt, ea, tokens in zip(prompts, settings, got, strict=True):
        if ea is None:
            assert tokens == greedy(hf, prompt, MAX_TOKENS)
        else:
            g = guard if ea.get("xtc_eos_newline_guard", True) else ()
            assert tokens == greedy(hf, prompt, MAX_TOKENS,
                                    lambda lg, c, t=ea["xtc_threshold"], g=g: xtc_remove(lg, t, g))
    # Without xtc_under_greedy a greedy request is plain greedy decoding.
    assert generate(llm, prompts[:2], [{"xtc_probability": 1.0, "xtc_threshold": 0.05}] * 2) == [
        greedy(hf, p, MAX_TOKENS) for p in prompts[:2]]
    # With probability 0.5 the per-step draws follow the request's seed.
    half = [{"xtc_threshold": 0.05, "xtc_probability": 0.5, "xtc_under_greedy": True}] * 4
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
    ({"xtc_threshold": 0.0001, "xtc_probability": 1.0}, "xtc_threshold"),
    ({"dry_multiplier": 1.0, "dry_allowed_length": 2**31}, "dry_allowed_length"),  # killed the engine (int32)
    ({"no_repeat_ngram_size": 2**31}, "no_repeat_ngram_size"),
    ({"xtc_threshold": 0.1, "xtc_probability": 2}, "xtc_probability"),
])
def test_bad_arguments_rejected_engine_alive(llm, extra, message):
    from vllm import SamplingParams

    # ValueError, or VLLMValidationError (what the server turns into HTTP 400) where vLLM has it.
    with pytest.raises(Exception, match=message) as err:
        llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(max_tokens=2, extra_args=extra),
                     use_tqdm=False)
    assert isinstance(err.value, ValueError) or type(err.value).__name__ == "VLLMValidationError"
    # (ignore_eos: a sampled end-of-text token would end it early whatever the engine's health)
    out = llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(max_tokens=2, ignore_eos=True),
                       use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 2


def _preemptions(llm) -> float:
    return sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")


def test_seeded_xtc_and_dry_same_text_alone_mixed_chunked_preempted(llm, hf, prompts, tiny_causal_lm):
    """A seeded XTC request (probability 0.5, so the text follows the coins) gives
    the reference's text, whose coin is a pure function of (seed, output
    position): alone, in a mixed batch, with its long prompt prefilled in
    chunks, and while long requests running together are preempted. DRY
    requests in the same batches match their reference too."""
    from vllm import SamplingParams

    from vllm_plugin_samplers.xtc import coin

    rng = random.Random(99)
    long_prompts = [[rng.randrange(3, 500) for _ in range(50)] * 4 for _ in range(4)]  # 200 tokens: chunked
    xtc = {"xtc_probability": 0.5, "xtc_threshold": 0.05, "xtc_under_greedy": True}
    dry = {"dry_multiplier": 2.0, "dry_allowed_length": 2}
    n = 80
    breakers = set(default_breakers(llm))
    guard = xtc_guard(tiny_causal_lm)

    def xtc_ref(prompt, seed):
        def edit(lg, c):
            hit = float(coin(torch.tensor([seed]), torch.tensor([len(c) - len(prompt)]))[0]) < 0.5
            return xtc_remove(lg, 0.05, guard) if hit else lg
        return greedy(hf, prompt, n, edit)

    def dry_ref(prompt):
        def edit(lg, c):
            lg = lg.clone()
            for tok, pen in dry_penalty(c, 2.0, 1.75, 2, breakers).items():
                lg[tok] -= pen
            return lg
        return greedy(hf, prompt, n, edit)

    def run(items):
        params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, extra_args=ea, seed=seed)
                  for _, ea, seed in items]
        outs = llm.generate([{"prompt_token_ids": p} for p, _, _ in items], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    target = long_prompts[0]
    want = xtc_ref(target, 5)
    assert want != xtc_ref(target, 6), "the seed should matter for this prompt"
    assert run([(target, xtc, 5)]) == [want]  # alone (prefilled in chunks of 32)
    mixed = run([(prompts[0], None, None), (target, xtc, 5), (prompts[1], xtc, 6), (prompts[2], dry, None)])
    assert mixed[1] == want
    before = _preemptions(llm)
    # Each needs 280 tokens (3 blocks of 128 on CPU); the 768-token cache holds 6 blocks, so
    # requests admitted with 2 blocks are preempted when they grow, then resumed.
    got = run([(long_prompts[1], dry, None), (target, xtc, 5), (long_prompts[2], dry, None),
               (long_prompts[3], xtc, 7)])
    assert _preemptions(llm) > before, "the batch should have been preempted"
    assert got[1] == want
    assert got[3] == xtc_ref(long_prompts[3], 7)
    assert got[0] == dry_ref(long_prompts[1])
    assert got[2] == dry_ref(long_prompts[2])
