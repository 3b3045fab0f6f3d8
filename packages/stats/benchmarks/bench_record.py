"""Cost of one ``record()`` call: vllm-plugin-stats (``jsonl`` and ``otel``) vs vLLM's LoggingStatLogger.

Plain script, no engine started (except with ``--served``, below). Run from the repository root:

    PYTHONPATH=packages/stats/src:packages/core/src python packages/stats/benchmarks/bench_record.py

Feeds the same real ``SchedulerStats`` / ``IterationStats`` objects to
``JsonlStatLogger.record()`` (writing to a temporary file, ``request`` records
off and on), to ``OtelStatLogger.record()`` (delta temporality, a real
OTLP/HTTP receiver on loopback in this process) and to
vLLM's ``LoggingStatLogger.record()``, in the same process, and prints
the mean nanoseconds per call for two cases: a decode step with no finished
request, and a step where one request finishes. ``log()`` is called every
``LOG_EVERY`` records for both loggers (outside the timed region) so the
per-interval lists stay the size they have in a server. For ``otel`` the
equivalent of ``log()`` is the hand-over of the aggregate to the OpenTelemetry
SDK that its reader thread does before each export; the benchmark does it at
the same points (periodic export off) and reports its cost separately, per
``record()`` call, together with the exports the receiver got.

``--served`` (starts two ``vllm serve``, one after the other, and keeps both
up: wrap it in ``flock /tmp/vllm-engine.lock``): the same requests against the
tiny test model with no stat-logger plugin (``VLLM_PLUGINS=""``) and with only
``otel`` on (``VLLM_PLUGINS=otel``, delta, exporting every second to a receiver
on loopback), BENCH_ROUNDS rounds alternating between the two servers; prints
generated tokens/s (best round of each) and the median per-pair ratio
(target >= 0.98).
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
from vllm_plugin_stats.otel import OtelStatLogger  # noqa: E402
from vllm_plugin_stats.testing.otlp_receiver import OtlpReceiver  # noqa: E402

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


def bench(stat_logger, sched, it, between=None) -> float:
    """Best-of-REPEATS mean ns per record() call; ``between()`` (default
    ``log()``) runs every LOG_EVERY calls, not timed."""
    record = stat_logger.record
    between = between or stat_logger.log
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
            between()
        best = min(best, total / N)
    return best


def main() -> None:
    logging.getLogger("vllm").setLevel(logging.WARNING)  # LoggingStatLogger.log() lines
    config = VllmConfig()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, OtlpReceiver() as receiver:
        os.environ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] = receiver.metrics_url
        os.environ["OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"] = "delta"
        os.environ["OTEL_METRIC_EXPORT_INTERVAL"] = "3600000"
        otel = OtelStatLogger(config, 0)
        assert otel.active
        pipeline = otel._pipeline
        hand_over_ns = [0]

        def hand_over() -> None:
            t0 = time.perf_counter_ns()
            pipeline.hand_over(otel)
            hand_over_ns[0] += time.perf_counter_ns() - t0
            pipeline.reader.collect()  # export to the receiver (not timed)
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
                hand_over_ns[0] = 0
                t_otel = bench(otel, sched, it, hand_over)
                rows.append((label, t_off, t_on, t_otel, t_theirs, hand_over_ns[0] / (N * REPEATS)))
        finally:
            gc.enable()
        for stat_logger in ours.values():
            stat_logger.close()
        otel.close()
        exports = len(receiver.requests)

    import platform

    import vllm

    print(f"vLLM {vllm.__version__}, Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, N={N} calls x best of {REPEATS}, log() every {LOG_EVERY} calls (not timed)")
    print("mean ns per record() call; the writer thread runs meanwhile (it shares the GIL)")
    print(f"otel: {exports} OTLP exports received; target: otel record() <= 2x LoggingStatLogger.record()")
    head = ("record() call", "Jsonl REQUESTS=0", "Jsonl REQUESTS=1", "otel", "LoggingStatLogger",
            "ratio 0", "ratio 1", "ratio otel")
    print(f"{head[0]:<22}{head[1]:>18}{head[2]:>18}{head[3]:>12}{head[4]:>19}{head[5]:>9}{head[6]:>9}{head[7]:>12}")
    for label, t_off, t_on, t_otel, t_theirs, _ in rows:
        print(f"{label:<22}{t_off:>15.0f} ns{t_on:>15.0f} ns{t_otel:>9.0f} ns{t_theirs:>16.0f} ns"
              f"{t_off / t_theirs:>9.2f}{t_on / t_theirs:>9.2f}{t_otel / t_theirs:>12.2f}")
    print("otel hand-over to the SDK (its reader thread, before each export), per record() call:")
    for label, *_, t_hand in rows:
        print(f"{label:<22}{t_hand:>15.0f} ns")


def _round(client, pool, n_requests: int) -> float:
    """Generated tokens/s of ``n_requests`` requests, 8 at a time."""

    def one(i: int) -> int:
        out = client.completions.create(model="tiny", prompt=f"Request {i}: once upon a time",
                                        max_tokens=64, temperature=0, extra_body={"ignore_eos": True})
        return out.usage.completion_tokens

    t0 = time.perf_counter()
    tokens = sum(pool.map(one, range(n_requests)))
    return tokens / (time.perf_counter() - t0)


def served() -> None:
    """Throughput of the same requests with no stat-logger plugin and with ``otel``.

    Both servers are started (one after the other) and kept up; the rounds then
    alternate between them (A B B A ...), so that drift of a shared machine
    hits both alike. Prints the best round of each and the median of the
    per-pair ratios.
    """
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    import openai

    from vllm_plugin_core.testing.models import build_causal_lm
    from vllm_plugin_core.testing.server import VllmServer

    rounds = int(os.environ.get("BENCH_ROUNDS", "6"))
    n_requests = int(os.environ.get("BENCH_REQUESTS", "64"))
    model = build_causal_lm()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VLLM_PLUGIN_STATS_"))}
    args = ["--max-model-len", "512", "--max-num-seqs", "8"]
    with OtlpReceiver() as receiver:
        otel_env = {**base, "VLLM_PLUGINS": "otel",
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": receiver.metrics_url,
                    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
                    "OTEL_METRIC_EXPORT_INTERVAL": "1000"}
        with VllmServer(model, args, {**base, "VLLM_PLUGINS": ""}, served_model_name="tiny") as plain_srv, \
                VllmServer(model, args, otel_env, served_model_name="tiny") as otel_srv, \
                ThreadPoolExecutor(8) as pool:
            clients = [openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0, timeout=300)
                       for srv in (plain_srv, otel_srv)]
            for c in clients:
                _round(c, pool, 8)  # warm-up
            got: list[list[float]] = [[], []]
            for r in range(rounds):
                order = (0, 1) if r % 2 == 0 else (1, 0)
                for which in order:
                    got[which].append(_round(clients[which], pool, n_requests))
        exported = receiver.total("vllm.generation_tokens")[0]
    plain, with_otel = max(got[0]), max(got[1])
    ratios = [b / a for a, b in zip(got[0], got[1], strict=True)]
    print(f"served, {n_requests} requests x 64 tokens, 8 concurrent, {rounds} alternating rounds per server; "
          f"otel exported {exported:.0f} generated tokens")
    print(f"no stat-logger plugin {plain:10.1f} tokens/s (best round)")
    print(f"otel                  {with_otel:10.1f} tokens/s (best round)   ratio {with_otel / plain:.3f}")
    print(f"per-pair ratios {', '.join(f'{x:.3f}' for x in ratios)}; median {statistics.median(ratios):.3f} "
          "(target >= 0.98)")


if __name__ == "__main__":
    if "--served" in sys.argv:
        served()
    else:
        main()
