"""Cost of one ``record()`` call: vllm-plugin-stats vs vLLM's LoggingStatLogger.

Plain script, no engine started. Run from the repository root:

    PYTHONPATH=packages/stats/src:packages/core/src python packages/stats/benchmarks/bench_record.py

Feeds the same real ``SchedulerStats`` / ``IterationStats`` objects to
``JsonlStatLogger.record()`` (writing to a temporary file, ``request`` records
off and on) and to vLLM's ``LoggingStatLogger.record()``, in the same process, and prints
the mean nanoseconds per call for two cases: a decode step with no finished
request, and a step where one request finishes. ``log()`` is called every
``LOG_EVERY`` records for both loggers (outside the timed region) so the
per-interval lists stay the size they have in a server.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import tempfile
import time

for _name in ("torchvision", "torchaudio", "torchcodec"):  # see packages/stats/tests/conftest.py
    try:
        __import__(_name)
    except Exception:
        for _k in [k for k in sys.modules if k == _name or k.startswith(_name + ".")]:
            del sys.modules[_k]
        sys.modules[_name] = None  # type: ignore[assignment]

from vllm.config import VllmConfig  # noqa: E402
from vllm.v1.engine import FinishReason  # noqa: E402
from vllm.v1.metrics.loggers import LoggingStatLogger  # noqa: E402
from vllm.v1.metrics.stats import (  # noqa: E402
    FinishedRequestStats,
    IterationStats,
    PrefixCacheStats,
    SchedulerStats,
)

from vllm_plugin_stats.logger import JsonlStatLogger  # noqa: E402

N = int(os.environ.get("BENCH_N", "200000"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
LOG_EVERY = 1000


def make_inputs(n_finished: int) -> tuple[SchedulerStats, IterationStats]:
    pcs = PrefixCacheStats()
    pcs.record(num_tokens=128, num_hits=64, preempted=False)
    sched = SchedulerStats(num_running_reqs=32, num_waiting_reqs=4, kv_cache_usage=0.4, prefix_cache_stats=pcs)
    it = IterationStats()
    it.num_generation_tokens = 32
    it.prompt_token_stats.total = 128
    it.prompt_token_stats.computed = 64
    it.time_to_first_tokens_iter.append(0.05)
    for i in range(n_finished):
        it.finished_requests.append(
            FinishedRequestStats(
                finish_reason=FinishReason.STOP,
                request_id=str(i),
                e2e_latency=1.5,
                num_prompt_tokens=128,
                num_generation_tokens=64,
                max_tokens_param=64,
                queued_time=0.01,
                prefill_time=0.05,
                inference_time=1.4,
                decode_time=1.35,
                mean_time_per_output_token=0.02,
            )
        )
    return sched, it


def bench(stat_logger, sched, it) -> float:
    """Best-of-REPEATS mean ns per record() call."""
    record = stat_logger.record
    best = float("inf")
    for _ in range(REPEATS):
        total = 0
        done = 0
        while done < N:
            chunk = min(LOG_EVERY, N - done)
            t0 = time.perf_counter_ns()
            for _ in range(chunk):
                record(sched, it)
            total += time.perf_counter_ns() - t0
            done += chunk
            stat_logger.log()
        best = min(best, total / N)
    return best


def main() -> None:
    logging.getLogger("vllm").setLevel(logging.WARNING)  # LoggingStatLogger.log() lines
    config = VllmConfig()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        theirs = LoggingStatLogger(config, 0)
        ours = {}
        for requests in ("0", "1"):
            os.environ["VLLM_PLUGIN_STATS_REQUESTS"] = requests
            ours[requests] = JsonlStatLogger(config, 0, path=os.path.join(tmp, f"bench{requests}.jsonl"))
            ours[requests].log_engine_initialized()
        gc.disable()
        try:
            for label, n_fin in (("no finished request", 0), ("1 finished request", 1)):
                sched, it = make_inputs(n_fin)
                t_theirs = bench(theirs, sched, it)
                t_off = bench(ours["0"], sched, it)
                t_on = bench(ours["1"], sched, it)
                rows.append((label, t_off, t_on, t_theirs))
        finally:
            gc.enable()
        for stat_logger in ours.values():
            stat_logger.close()

    import platform

    import vllm

    print(f"vLLM {vllm.__version__}, Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, N={N} calls x best of {REPEATS}, log() every {LOG_EVERY} calls (not timed)")
    print("mean ns per record() call; the writer thread runs meanwhile (it shares the GIL)")
    head = ("record() call", "Jsonl REQUESTS=0", "Jsonl REQUESTS=1", "LoggingStatLogger", "ratio 0", "ratio 1")
    print(f"{head[0]:<22}{head[1]:>18}{head[2]:>18}{head[3]:>19}{head[4]:>9}{head[5]:>9}")
    for label, t_off, t_on, t_theirs in rows:
        print(f"{label:<22}{t_off:>15.0f} ns{t_on:>15.0f} ns{t_theirs:>16.0f} ns"
              f"{t_off / t_theirs:>9.2f}{t_on / t_theirs:>9.2f}")


if __name__ == "__main__":
    main()
