"""Time per decode step of each sampler, side by side in one run.

For batch 1, 32, 256 x vocabulary 32k, 152k x context 512, 4k it prints the
mean milliseconds of one decode step (one new token per request, then
``apply``) for:

* ``empty``: a processor with no active request (must be < 10 us);
* ``ngram3`` / ``dry`` / ``xtc``: every request in the batch uses that sampler;
* ``hf_ngram3``: transformers' ``NoRepeatNGramLogitsProcessor`` on the same data;
* ``vllm_sample``: vLLM's own sampling step on the same logits
  (``TopKTopPSampler`` with top-k 50, top-p 0.9).

Run: ``python packages/samplers/benchmarks/bench_decode_step.py [--quick]``
(needs vLLM, transformers and this package installed).
"""

from __future__ import annotations

import argparse
import random
import time

import torch


def timed(fn, steps: int) -> float:
    fn()  # warm-up (builds state)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps * 1000


def main() -> None:
    # DRY resolves sequence breakers through the model's tokenizer; the
    # benchmark has no model, so two token ids stand in for the breakers.
    import types

    from transformers import NoRepeatNGramLogitsProcessor
    from vllm import SamplingParams
    from vllm.v1.sample.ops.topk_topp_sampler import TopKTopPSampler

    import vllm_plugin_samplers.processors as mod
    from vllm_plugin_core import compat
    from vllm_plugin_samplers.processors import (
        DryLogitsProcessor,
        NoRepeatNgramLogitsProcessor,
        XtcLogitsProcessor,
    )

    mod._breakers = lambda *a: frozenset({0, 1})
    CONFIG = types.SimpleNamespace(model_config=types.SimpleNamespace(
        tokenizer="none", trust_remote_code=False, tokenizer_revision=None))

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="batch 1 and 32 only")
    args = parser.parse_args()
    BatchUpdate, _ = compat.batch_update_types()
    torch.manual_seed(0)
    rng = random.Random(0)
    from vllm.platforms import current_platform

    current_platform.import_kernels()  # vLLM's CPU kernels, as its worker loads them
    sampler = TopKTopPSampler()
    batches = [1, 32] if args.quick else [1, 32, 256]
    print(f"torch threads: {torch.get_num_threads()}")
    header = f"{'batch':>5} {'vocab':>6} {'ctx':>5} | " + " ".join(
        f"{c:>11}" for c in ("empty_us", "ngram3", "dry", "xtc", "hf_ngram3", "vllm_sample")) + " | hf/ngram3"
    print(header)
    print("-" * len(header))
    for batch in batches:
        for vocab in (32_000, 152_000):
            for ctx in (512, 4096):
                logits = torch.randn(batch, vocab)
                prompts = []
                for _ in range(batch):
                    base = [rng.randrange(vocab) for _ in range(ctx // 4)]
                    prompts.append((base * 4)[:ctx])
                steps = 3 if batch == 256 else 10
                row: dict[str, float] = {}

                def proc_step(cls, extra, active=True):
                    p = cls(CONFIG, torch.device("cpu"), False)
                    outs = [[] for _ in range(batch)]
                    added = [(i, SamplingParams(extra_args=extra if active else None, seed=i),
                              prompts[i], outs[i]) for i in range(batch)]
                    p.update_state(BatchUpdate(batch_size=batch, removed=[], added=added, moved=[]))

                    new_tokens = [rng.randrange(vocab) for _ in range(batch)]

                    def step():
                        if active:  # the engine appends each request's new token
                            for o, t in zip(outs, new_tokens, strict=True):
                                o.append(t)
                        p.update_state(None)
                        p.apply(logits)
                    return step

                row["empty_us"] = timed(proc_step(NoRepeatNgramLogitsProcessor, None, active=False),
                                        1000) * 1000
                row["ngram3"] = timed(proc_step(NoRepeatNgramLogitsProcessor, {"no_repeat_ngram_size": 3}), steps)
                row["dry"] = timed(proc_step(DryLogitsProcessor, {"dry_multiplier": 0.8}), steps)
                row["xtc"] = timed(proc_step(XtcLogitsProcessor,
                                             {"xtc_threshold": 0.1, "xtc_probability": 1.0}), steps)
                hf = NoRepeatNGramLogitsProcessor(3)
                ids = torch.tensor(prompts)

                def hf_step():
                    hf(ids, logits.clone())
                row["hf_ngram3"] = timed(hf_step, max(1, steps // 3))
                k = torch.full((batch,), 50, dtype=torch.long)
                p = torch.full((batch,), 0.9)
                row["vllm_sample"] = timed(lambda: sampler(logits.clone(), {}, k, p), steps)
                print(f"{batch:>5} {vocab:>6} {ctx:>5} | " + " ".join(f"{row[c]:>11.3f}" for c in row)
                      + f" | {row['hf_ngram3'] / row['ngram3']:>8.1f}x", flush=True)
    print("\nms per decode step unless noted (empty_us: microseconds).")


if __name__ == "__main__":
    main()
