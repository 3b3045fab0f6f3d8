"""A request's cost is its own: V2 decode steps measured side by side in one run.

* A short request with a sampler (512-token context), alone, then beside one
  60k-token request that uses no sampler (target: <= 1.2x), and after a
  60k-token request *with* the sampler left the batch (target: 1.0x, the
  suffix bank shrinks back).
* XTC on one row beside 255 rows without it, against that row alone.
* Bytes a DRY step allocates per row per bank column (counted by a dispatch
  mode: new tensors only, views and in-place writes allocate nothing; target
  <= 64 B), and the step buffers it keeps between steps.
* Admission of 256 DRY requests in one step against one (target <= 10x).
* A DRY step with 32 worst-case breakers (every breaker 40 characters, so
  32 x 39 multi-token tails of 20 tokens) against the default set (target <= 2x).
* A short request's step after a 60k-token request with the sampler
  finished (vLLM's ``remove_request`` frees its slot; nothing reuses it).

Run: ``python packages/samplers/benchmarks/bench_isolation.py [--quick]``
(vLLM 0.31+ with the V2 logits-processor interface, and this package).
"""

from __future__ import annotations

import argparse
import time
import types

import numpy as np
import torch
from _bench import digits_vocabulary, timed


def cpu_timed(fn, steps: int) -> float:
    """CPU milliseconds (all threads) per call of ``fn``, after one warm-up: on
    a machine shared with other work this moves less than the wall clock."""
    fn()
    t = time.process_time()
    for _ in range(steps):
        fn()
    return (time.process_time() - t) / steps * 1000


def bytes_allocated(fn) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    total = [0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func._schema.is_mutable and not func.is_view:
                for t in out if isinstance(out, tuple | list) else (out,):
                    if isinstance(t, torch.Tensor):
                        total[0] += t.numel() * t.element_size()
            return out

    with Count():
        fn()
    return total[0]


def main() -> None:
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor import interface as v2

    from vllm_plugin_samplers.processors import (
        DryLogitsProcessor,
        NoRepeatNgramLogitsProcessor,
        XtcLogitsProcessor,
    )

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="vocab 32k, long request 8k")
    args = parser.parse_args()
    vocab, long_len, short_len = (32_000, 8_192, 512) if args.quick else (152_000, 60_000, 512)
    steps = 5 if args.quick else 10
    digits_vocabulary(vocab)

    class Cfg:
        speculative_config = None

        class model_config:
            tokenizer = "unused"
            trust_remote_code = False
            seed = 0

    def state(slots: int, width: int, lens: list[int]):
        def buf(values):
            t = torch.as_tensor(np.asarray(values), dtype=torch.int32).clone()
            return types.SimpleNamespace(gpu=t, np=t.numpy())

        g = torch.Generator().manual_seed(0)
        ids = types.SimpleNamespace(gpu=torch.randint(0, 64, (slots, width), generator=g, dtype=torch.int32))
        return v2.LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=slots, vocab_size=vocab,
                                         all_token_ids=ids, prompt_len=buf(lens), prefill_len=buf(lens),
                                         total_len=buf(lens))

    def ctx(slots: list[int], lens: list[int]):
        return v2.LogitsContext(
            expanded_idx_mapping=torch.tensor(slots, dtype=torch.int32),
            idx_mapping=torch.tensor(slots, dtype=torch.int32), idx_mapping_np=np.array(slots, dtype=np.int32),
            expanded_local_pos=torch.zeros(len(slots), dtype=torch.int32),
            input_ids=torch.ones(len(slots), dtype=torch.int32), pos=torch.tensor([n - 1 for n in lens]),
            seq_lens_upper_bound_np=np.array(lens, dtype=np.int32))

    def step(cls, extras, lens, width):
        """A processor with requests ``extras`` (None: no sampler) of lengths ``lens``; one step."""
        Cfg.model_config.get_vocab_size = staticmethod(lambda: vocab)
        proc = cls(Cfg, state(len(extras), width, lens))
        for s, e in enumerate(extras):
            proc.add_request(s, SamplingParams(extra_args=e, seed=1))
        proc.apply_staged_writes()
        c = ctx(list(range(len(extras))), lens)
        logits = torch.randn(len(extras), vocab)
        return proc, lambda: proc.apply(logits, c)

    samplers = {"no_repeat_ngram": (NoRepeatNgramLogitsProcessor, {"no_repeat_ngram_size": 3}),
                "dry": (DryLogitsProcessor, {"dry_multiplier": 0.8}),
                "xtc": (XtcLogitsProcessor, {"xtc_probability": 1.0, "xtc_threshold": 0.1})}
    print(f"vocab {vocab}, short request {short_len} tokens, long request {long_len} tokens, "
          f"{torch.get_num_threads()} threads; V2 interface, CPU")
    print(f"{'sampler':16} {'alone ms':>9} {'beside long plain':>18} {'ratio':>6} {'after long left':>16} {'ratio':>6}"
          f" {'after long finished':>16} {'ratio':>6}")
    for name, (cls, extra) in samplers.items():
        _, alone = step(cls, [extra], [short_len], short_len)
        _, beside = step(cls, [extra, None], [short_len, long_len], long_len)
        t_alone, t_beside = timed(alone, steps), timed(beside, steps)
        after = ""
        if cls is not XtcLogitsProcessor:
            proc, both = step(cls, [extra, extra], [short_len, long_len], long_len)
            both()
            proc.add_request(1, SamplingParams())  # the long request leaves; its slot goes to a plain one
            proc.apply_staged_writes()
            t_after = timed(both, steps)
            after = f"{t_after:13.2f} ms {t_after / t_alone:5.2f}x"
            from vllm.v1.worker.gpu.states import RequestState

            proc, both = step(cls, [extra, extra], [short_len, long_len], long_len)
            both()
            runner = types.SimpleNamespace(req_id_to_index={"long": 1}, index_to_req_id={1: "long"}, free_indices=[],
                                           all_token_ids=proc.req_states.all_token_ids)
            RequestState.remove_request(runner, "long")  # finished: vLLM frees the slot, nothing reuses it
            c = ctx([0], [short_len])
            logits = torch.randn(1, vocab)
            t_done = timed(lambda: proc.apply(logits, c), steps)
            after += f" {t_done:13.2f} ms {t_done / t_alone:5.2f}x (bank {proc.batch.bank.width} columns)"
        print(f"{name:16} {t_alone:9.2f} {t_beside:15.2f} ms {t_beside / t_alone:5.2f}x {after}")

    _, one = step(XtcLogitsProcessor, [samplers["xtc"][1]], [short_len], 64)
    _, many = step(XtcLogitsProcessor, [samplers["xtc"][1], *[None] * 255], [short_len] * 256, 64)
    t1, t256 = timed(one, steps), timed(many, steps)
    print(f"xtc: one row {t1:.2f} ms; the same row beside 255 rows without XTC {t256:.2f} ms ({t256 / t1:.2f}x)")

    for n in (512, 4096):
        proc, s = step(DryLogitsProcessor, [{"dry_multiplier": 0.8}], [n], n)
        s()
        held = getattr(getattr(proc.batch, "scratch", None), "nbytes", lambda: 0)()
        print(f"dry: {bytes_allocated(s) / (n + 1):.1f} B allocated per step per column of a {n}-token row "
              f"(step buffers kept: {held / (n + 1):.0f} B per column; bank: {proc.batch.bank.width} columns)")

    from vllm_plugin_samplers.breakers import MAX_TAIL, BreakerSet

    rng = np.random.default_rng(0)
    worst = BreakerSet(frozenset(rng.choice(vocab, 64, replace=False).tolist()), tuple(sorted(
        (tuple(rng.integers(0, vocab, MAX_TAIL).tolist()), frozenset(rng.integers(0, vocab, 100).tolist()))
        for _ in range(32 * 39))))

    def breaker_step(bs, rows: int = 8, n: int = short_len):
        Cfg.model_config.get_vocab_size = staticmethod(lambda: vocab)
        proc = DryLogitsProcessor(Cfg, state(rows, n, [n] * rows))
        if bs is not None:
            proc._breakers = lambda p, sampling_params: bs
        for s in range(rows):
            proc.add_request(s, SamplingParams(extra_args={"dry_multiplier": 0.8}))
        proc.apply_staged_writes()
        c = ctx(list(range(rows)), [n] * rows)
        logits = torch.randn(rows, vocab)
        return lambda: proc.apply(logits, c)

    s_default, s_worst = breaker_step(None), breaker_step(worst)
    t_default, t_worst = timed(s_default, steps), timed(s_worst, steps)
    c_default, c_worst = cpu_timed(s_default, steps), cpu_timed(s_worst, steps)
    print(f"dry breakers (8 rows of {short_len} tokens): default set {t_default:.2f} ms, 32 worst-case breakers "
          f"({len(worst.tails)} tails of {MAX_TAIL} tokens) {t_worst:.2f} ms ({t_worst / t_default:.2f}x); "
          f"CPU time {c_default:.2f} ms vs {c_worst:.2f} ms ({c_worst / c_default:.2f}x)")

    def admit(k: int, clock=time.perf_counter) -> float:
        """One step admitting ``k`` requests into a processor that holds the default breaker set already."""
        Cfg.model_config.get_vocab_size = staticmethod(lambda: vocab)
        proc = DryLogitsProcessor(Cfg, state(k + 1, short_len, [short_len] * (k + 1)))
        proc.add_request(k, SamplingParams(extra_args={"dry_multiplier": 0.8}))
        proc.apply_staged_writes()  # the breaker set's tables are built once per processor
        t = clock()
        for s in range(k):
            proc.add_request(s, SamplingParams(extra_args={"dry_multiplier": 0.8}))
        proc.apply_staged_writes()
        return (clock() - t) * 1000

    many = 256 if not args.quick else 64
    admit(1)
    a1, a256 = min(admit(1) for _ in range(3)), admit(many)
    c1, c256 = min(admit(1, time.process_time) for _ in range(3)), admit(many, time.process_time)
    print(f"dry admission: one request {a1:.1f} ms, {many} in one step {a256:.1f} ms ({a256 / a1:.0f}x); "
          f"CPU time {c1:.1f} ms vs {c256:.1f} ms ({c256 / c1:.0f}x)")


if __name__ == "__main__":
    main()
