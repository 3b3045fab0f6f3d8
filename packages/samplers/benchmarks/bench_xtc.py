"""XTC's decode step beside one softmax, interleaved (robust on a shared machine).

Batch 256, vocabulary 152k, every request with XTC (threshold 0.1,
probability 1) and the EOS/newline guard on (2% of the vocabulary holds a
newline), through the V1 interface as on CPU builds. Each round times, one
after the other, ``torch.softmax`` over the same logits, the processor's
step and the formulation before issue 25 (``topk(floor(1 / t) + 1)`` over the
vocabulary, one ``exp`` pass over the whole batch); the medians over the
rounds share the machine's conditions. Wall clock with the process's torch
threads, and CPU time (``time.process_time``: the work itself, whatever else
the machine runs).

Run: ``python packages/samplers/benchmarks/bench_xtc.py [--quick] [--rounds N] [--threads N]``
(with 2 threads on a busy 2-core machine, every step that runs many small
parallel regions, as the chunked ``exp`` sum does, waits on descheduled
threads: ``--threads 1`` measures the work itself).
"""

from __future__ import annotations

import argparse
import statistics
import time
import types

import torch


def topk_formulation(logits: torch.Tensor, threshold: torch.Tensor, k: int) -> None:
    """XTC as it was computed before (every row acting): top-k, one exp pass, scatter."""
    vals, idx = torch.topk(logits, k, dim=-1)
    top = vals[:, :1].float()
    total = (logits.float() - top).exp_().sum(-1, keepdim=True)
    probs = torch.exp(vals.float() - top) / total
    above = probs >= threshold[:, None]
    least = torch.where(above, probs, float("inf")).amin(-1, keepdim=True)
    keep = torch.where(above & (probs == least), idx, torch.iinfo(idx.dtype).max).amin(-1, keepdim=True)
    drop = above & (idx != keep) & (above.sum(-1, keepdim=True) >= 2)
    logits.scatter_(1, idx, vals.masked_fill(drop, float("-inf")))


def main() -> None:
    from vllm import SamplingParams

    import vllm_plugin_samplers.processors as mod
    from vllm_plugin_core import compat
    from vllm_plugin_samplers.breakers import Resolver

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="batch 32, vocab 32k")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, vocab = (32, 32_000) if args.quick else (256, 152_000)
    resolver = Resolver([str(i) + ("\n" if i % 50 == 0 else "") for i in range(vocab)], eos_token_ids=(vocab - 1,))
    mod.make_resolver = lambda cfg: resolver
    config = types.SimpleNamespace(
        model_config=types.SimpleNamespace(seed=0, tokenizer="synthetic", get_vocab_size=lambda: vocab),
        scheduler_config=types.SimpleNamespace(max_num_seqs=batch), speculative_config=None)
    BatchUpdate, _ = compat.batch_update_types()
    torch.manual_seed(0)
    logits = torch.randn(batch, vocab)
    proc = mod.XtcLogitsProcessor(config, torch.device("cpu"), False)
    outs = [[] for _ in range(batch)]
    extra = {"xtc_threshold": 0.1, "xtc_probability": 1.0}
    proc.update_state(BatchUpdate(batch_size=batch, removed=[], moved=[], added=[
        (i, SamplingParams(extra_args=extra, seed=i), [1, 2, 3], outs[i]) for i in range(batch)]))
    threshold = torch.full((batch,), 0.1)

    def step() -> None:
        for o in outs:
            o.append(5)
        proc.update_state(None)
        proc.apply(logits)

    runs = {"torch.softmax": lambda: torch.softmax(logits, -1), "xtc step (now)": step,
            "xtc before (topk)": lambda: topk_formulation(logits, threshold, 11)}
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    for f in runs.values():
        f()
    for _ in range(args.rounds):
        for name, f in runs.items():
            w, c = time.perf_counter(), time.process_time()
            f()
            wall[name].append((time.perf_counter() - w) * 1000)
            cpu[name].append((time.process_time() - c) * 1000)
    print(f"torch threads: {torch.get_num_threads()}; batch {batch}, vocab {vocab}; medians of {args.rounds} rounds")
    ws, cs = statistics.median(wall["torch.softmax"]), statistics.median(cpu["torch.softmax"])
    print(f"  {'':20s} {'wall ms':>9s} {'ratio':>6s} {'cpu ms':>9s} {'ratio':>6s}")
    for name in runs:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"  {name:20s} {w:9.1f} {w / ws:5.2f}x {c:9.1f} {c / cs:5.2f}x")


if __name__ == "__main__":
    main()
