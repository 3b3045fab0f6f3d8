"""``vllm-plugin-stats summary``: one table (or JSON object) per run.

Totals come from the ``interval`` records (a ``stop`` record may be missing
after a crash). Latency percentiles are exact from ``request`` records where
the file has them (``VLLM_PLUGIN_STATS_REQUESTS=1``); otherwise they are the
count-weighted mean of the interval percentiles (``"source": "intervals"``,
an approximation). Idle time is the span of idle ``interval`` records plus,
where a ``stop`` record exists, the idle tail it reports. Imports only the
standard library.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from typing import Any

from vllm_plugin_stats._reader import Run, Warn, read_runs

__all__ = ["format_table", "summarize_files", "summarize_run"]

_LATENCIES = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_latency_s", "e2e"), ("queue_time_s", "queue"))


def _pct(sorted_values: list[float], q: float) -> float:
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _exact(values: list[float]) -> dict[str, Any] | None:
    values = sorted(v for v in values if isinstance(v, (int, float)))
    if not values:
        return None
    return {"count": len(values), "p50": _pct(values, 50), "p90": _pct(values, 90),
            "p99": _pct(values, 99), "max": values[-1], "source": "requests"}


def _pooled(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    rows = [s for s in summaries if s and s.get("count")]
    if not rows:
        return None
    n = sum(s["count"] for s in rows)

    def mean(key: str) -> float | None:
        vals = [(s[key], s["count"]) for s in rows if isinstance(s.get(key), (int, float))]
        return sum(v * c for v, c in vals) / sum(c for _, c in vals) if vals else None

    maxes = [s["max"] for s in rows if isinstance(s.get("max"), (int, float))]
    return {"count": n, "p50": mean("p50"), "p90": mean("p90"), "p99": mean("p99"),
            "max": max(maxes) if maxes else None, "source": "intervals"}


def _is_idle(rec: dict[str, Any]) -> bool:
    if "idle" in rec:
        return bool(rec["idle"])
    return not (rec.get("running") or rec.get("waiting") or rec.get("finished_requests")
                or rec.get("generation_tokens") or rec.get("prompt_tokens"))


def summarize_run(run: Run) -> dict[str, Any]:
    """The figures of one run (see the module docstring)."""
    intervals = [r for r in run.records if r["type"] == "interval"]
    requests = [r for r in run.records if r["type"] == "request"]
    stops = {int(r.get("engine", 0) or 0): r for r in run.records if r["type"] == "stop"}
    engines = run.engines or [0]
    start = next(iter(run.starts.values()), {})

    def total(key: str) -> int:
        return sum(int(r.get(key) or 0) for r in intervals)

    t_first = min((r["ts"] for r in run.records if isinstance(r.get("ts"), (int, float))), default=None)
    t_last = max((r["ts"] for r in run.records if isinstance(r.get("ts"), (int, float))), default=None)
    if stops:
        uptime = max(float(s.get("uptime_s") or 0.0) for s in stops.values())
    elif t_first is not None and t_last is not None:
        uptime = t_last - t_first
    else:
        uptime = 0.0
    idle_by_engine = []
    for e in engines:
        stop = stops.get(e)
        if stop is not None and isinstance(stop.get("idle_s"), (int, float)):
            idle_by_engine.append(float(stop["idle_s"]))
        else:
            idle_by_engine.append(sum(float(r.get("interval_s") or 0.0) for r in intervals
                                      if int(r.get("engine", 0) or 0) == e and _is_idle(r)))
    idle = sum(idle_by_engine) / len(idle_by_engine)

    n_req = total("finished_requests")
    prompt, gen = total("prompt_tokens"), total("generation_tokens")
    queries = sum(int((r.get("prefix_cache") or {}).get("queries") or 0) for r in intervals)
    hits = sum(int((r.get("prefix_cache") or {}).get("hits") or 0) for r in intervals)
    reasons: dict[str, int] = {}
    for r in intervals:
        for k, v in (r.get("finish_reasons") or {}).items():
            reasons[k] = reasons.get(k, 0) + int(v)
    latency: dict[str, Any] = {}
    for key, _ in _LATENCIES:
        if requests:
            latency[key] = _exact([r.get(key) for r in requests])
        else:
            latency[key] = _pooled([r.get(key) for r in intervals])
    # Engines of a process share one writer: each stop reports its total.
    dropped = (max(int(s.get("dropped_records") or 0) for s in stops.values()) if stops
               else total("dropped_records"))
    return {
        "stream": run.stream,
        "pid": run.pid,
        "model": start.get("served_model_name") or start.get("model"),
        "vllm_version": start.get("vllm_version"),
        "started": t_first,
        "engines": engines,
        "complete": bool(stops) and all(e in stops for e in engines),
        "uptime_s": uptime,
        "idle_s": idle,
        "intervals": len(intervals),
        "requests": n_req,
        "prompt_tokens": prompt,
        "generation_tokens": gen,
        "request_throughput": n_req / uptime if uptime > 0 else None,
        "prompt_throughput": prompt / uptime if uptime > 0 else None,
        "generation_throughput": gen / uptime if uptime > 0 else None,
        "finish_reasons": reasons,
        "preemptions": total("preemptions"),
        "prefix_cache_queries": queries,
        "prefix_cache_hits": hits,
        "prefix_cache_hit_rate": hits / queries if queries else None,
        "dropped_records": dropped,
        "latency_s": latency,
    }


def summarize_files(paths: Iterable[str | os.PathLike[str]], warn: Warn) -> list[dict[str, Any]]:
    """One summary per run in the files (rotated siblings included)."""
    return [summarize_run(run) for run in read_runs(paths, warn)]


def _num(value: Any, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def format_table(summary: dict[str, Any], index: int = 1) -> str:
    """A plain-text table of one run's summary."""
    s = summary
    started = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s["started"]))
               if s["started"] is not None else "?")
    engines = ", ".join(str(e) for e in s["engines"])
    lines = [
        f"run {index}: {s['stream']}",
        f"  pid {s['pid']}, model {s['model']}, vLLM {s['vllm_version']}, engines {engines}, "
        f"started {started}{'' if s['complete'] else ', NO stop record (cut off?)'}",
        f"  {'uptime':<18}{s['uptime_s']:.1f} s (idle {s['idle_s']:.1f} s, {s['intervals']} interval records)",
        f"  {'requests':<18}{s['requests']} ({_num(s['request_throughput'], '{:.2f}')}/s)"
        + (f"; finished by {', '.join(f'{k} {v}' for k, v in sorted(s['finish_reasons'].items()))}"
           if s["finish_reasons"] else ""),
        f"  {'tokens':<18}prompt {s['prompt_tokens']}, generation {s['generation_tokens']}",
        f"  {'throughput':<18}prompt {_num(s['prompt_throughput'], '{:.1f}')} tok/s, "
        f"generation {_num(s['generation_throughput'], '{:.1f}')} tok/s (over the uptime)",
        f"  {'preemptions':<18}{s['preemptions']}",
        f"  {'prefix cache':<18}"
        + (f"{s['prefix_cache_hit_rate'] * 100:.1f} % hit ({s['prefix_cache_hits']}/{s['prefix_cache_queries']} tokens)"
           if s["prefix_cache_hit_rate"] is not None else "no lookups"),
    ]
    if s["dropped_records"]:
        lines.append(f"  {'dropped records':<18}{s['dropped_records']} (writer queue full)")
    lines.append(f"  {'latency (s)':<18}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'n':>7}  source")
    for key, label in _LATENCIES:
        q = s["latency_s"].get(key)
        if q is None:
            lines.append(f"    {label:<16}{'-':>9}{'-':>9}{'-':>9}{'-':>9}{0:>7}")
            continue
        lines.append(f"    {label:<16}{_num(q['p50']):>9}{_num(q['p90']):>9}{_num(q['p99']):>9}"
                     f"{_num(q['max']):>9}{q['count']:>7}  {q['source']}")
    return "\n".join(lines)
