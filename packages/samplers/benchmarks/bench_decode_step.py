"""Samplers at production scale, ratios measured side by side in one run.

* Decode step (one new token per request, then ``apply``), every request of
  the batch using that sampler, beside one ``torch.softmax`` over the same
  logits tensor (target: each sampler <= 2x the softmax). A mixed batch (one
  whole-context DRY request, the rest with ``dry_penalty_last_n`` 64) shows
  the windowed rows' work staying bounded by their window.
* No active request: ``apply`` with none of the batch using a sampler (< 10 us).
* DRY admission of one request whose prompt is a single repeated token, beside
  the same request with a random prompt (targets: <= 50 ms at 32k, <= 2x).
* Host memory per context token per request for each sampler's state (<= 32 B):
  the state tensors' bytes and the process's RSS growth while admitting.

Run: ``python packages/samplers/benchmarks/bench_decode_step.py [--quick]``
(vLLM and this package installed; the V1 interface, as on CPU builds).
"""

from __future__ import annotations

import argparse
import random
import time
import types

import torch
from _bench import digits_vocabulary, timed


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def main() -> None:
    from vllm import SamplingParams

    from vllm_plugin_core import compat
    from vllm_plugin_samplers.processors import (
        DryLogitsProcessor,
        NoRepeatNgramLogitsProcessor,
        XtcLogitsProcessor,
    )

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="batch 32, vocab 32k, context 1k")
    args = parser.parse_args()
    batch, vocab, ctx = (32, 32_000, 1024) if args.quick else (256, 152_000, 4096)
    admit_len = 8192 if args.quick else 32768
    digits_vocabulary(vocab)
    config = types.SimpleNamespace(
        model_config=types.SimpleNamespace(seed=0, get_vocab_size=lambda: vocab),
        scheduler_config=types.SimpleNamespace(max_num_seqs=batch), speculative_config=None)
    BatchUpdate, _ = compat.batch_update_types()
    rng = random.Random(0)
    torch.manual_seed(0)
    print(f"torch threads: {torch.get_num_threads()}; batch {batch}, vocab {vocab}, context {ctx}")
    logits = torch.randn(batch, vocab)
    prompts = []
    for _ in range(batch):
        base = [rng.randrange(vocab) for _ in range(ctx // 4)]
        prompts.append((base * 4)[:ctx])
    steps = 5

    def processor(cls, extra, n=batch, use=prompts):
        p = cls(config, torch.device("cpu"), False)
        outs = [[] for _ in range(n)]
        extras = extra if isinstance(extra, list) else [extra] * n
        p.update_state(BatchUpdate(batch_size=n, removed=[], moved=[], added=[
            (i, SamplingParams(extra_args=extras[i], seed=i), use[i], outs[i]) for i in range(n)]))
        return p, outs

    softmax = timed(lambda: torch.softmax(logits, -1), steps)
    print(f"\ndecode step, ms (ratio to one torch.softmax over the same [{batch}, {vocab}] logits)")
    print(f"  torch.softmax            {softmax:9.2f}")
    samplers = [("no_repeat_ngram n=3", NoRepeatNgramLogitsProcessor, {"no_repeat_ngram_size": 3}),
                ("dry (whole context)", DryLogitsProcessor, {"dry_multiplier": 0.8}),
                ("dry last_n=1024", DryLogitsProcessor, {"dry_multiplier": 0.8, "dry_penalty_last_n": 1024}),
                ("dry last_n=64", DryLogitsProcessor, {"dry_multiplier": 0.8, "dry_penalty_last_n": 64}),
                # one whole-context request beside last_n rows: two passes, the last_n rows stay bounded
                ("dry 1 whole + last_n=64", DryLogitsProcessor,
                 [{"dry_multiplier": 0.8}] + [{"dry_multiplier": 0.8, "dry_penalty_last_n": 64}] * (batch - 1)),
                ("xtc t=0.1 p=1", XtcLogitsProcessor, {"xtc_threshold": 0.1, "xtc_probability": 1.0})]
    memory = {}
    for name, cls, extra in samplers:
        before = rss()
        p, outs = processor(cls, extra)
        grown = rss() - before
        state = sum(t.numel() * t.element_size() for t in (p.batch.bank.tok, p.batch.bank.match)) \
            if hasattr(p, "batch") else 0
        memory[name] = (state / (batch * ctx), grown / (batch * ctx))
        new = [rng.randrange(vocab) for _ in range(batch)]

        def step(p=p, outs=outs, new=new):
            for o, t in zip(outs, new, strict=True):
                o.append(t)
            p.update_state(None)
            p.apply(logits)
        ms = timed(step, steps)
        print(f"  {name:<24} {ms:9.2f}   {ms / softmax:5.2f}x")

    idle, _ = processor(DryLogitsProcessor, None)
    us = timed(lambda: idle.apply(logits), 2000) * 1000
    print(f"\nno active request: {us:.2f} us per apply")

    print(f"\nDRY admission of one {admit_len}-token prompt, ms")
    same = [7] * admit_len
    rand = [rng.randrange(vocab) for _ in range(admit_len)]
    res = {}
    sp = SamplingParams(extra_args={"dry_multiplier": 0.8})
    for label, prompt in (("single repeated token", same), ("random tokens", rand)):
        best = float("inf")
        for _ in range(3):
            p = DryLogitsProcessor(config, torch.device("cpu"), False)  # built at engine start
            p.batch.bank.ensure_width(admit_len + 1)  # rows already this wide (else growth is added once)
            t = time.perf_counter()
            p.update_state(BatchUpdate(batch_size=1, removed=[], moved=[], added=[(0, sp, prompt, [])]))
            best = min(best, (time.perf_counter() - t) * 1000)
        res[label] = best
        print(f"  {label:<24} {res[label]:9.2f}")
    print(f"  ratio repeated / random  {res['single repeated token'] / res['random tokens']:9.2f}x")

    print("\nhost memory per context token per request, bytes (state tensors; RSS growth at admission)")
    for name, (state, grown) in memory.items():
        print(f"  {name:<24} {state:6.1f}  {grown:6.1f}")


if __name__ == "__main__":
    main()
