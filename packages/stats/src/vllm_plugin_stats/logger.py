"""``JsonlStatLogger``: vLLM stat logger plugin writing JSON Lines.

vLLM (0.31 to 0.34) instantiates it once per engine as
``JsonlStatLogger(vllm_config, engine_index)`` in its front-end process, calls
``log_engine_initialized()`` once, ``record(...)`` after every engine step
(hot path) and ``log()`` every ``VLLM_LOG_STATS_INTERVAL`` seconds.

* ``record()`` only adds to in-memory counters and appends finished-request
  samples to per-interval lists, under a lock (O(1) amortised, no I/O, no
  sorting, no JSON).
* ``log()`` swaps the interval aggregate for a fresh one, builds the
  ``interval`` record (percentiles are computed here) and queues it.
* A daemon writer thread (:mod:`vllm_plugin_stats._writer`) serializes and
  writes.
* ``close()`` (at exit, on garbage collection, or called by the offline
  helpers) writes a last ``interval`` record if anything was recorded since the
  previous one, then the ``stop`` record, and drains the writer.

The record schema is documented in the package README.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
import weakref
from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase

from vllm_plugin_core.guard import is_strict
from vllm_plugin_core.settings import SettingError
from vllm_plugin_stats import SCHEMA_VERSION, __version__, _writer
from vllm_plugin_stats._settings import SETTINGS
from vllm_plugin_stats._writer import logger

__all__ = ["JsonlStatLogger", "percentiles", "summarize"]

_QUANTILES = (50, 90, 99)
_INACTIVE_NOTICE_DONE = False
_NOTICE_LOCK = threading.Lock()
_LIVE: weakref.WeakSet[JsonlStatLogger] = weakref.WeakSet()


def percentiles(sorted_values: list[float], qs: tuple[int, ...] = _QUANTILES) -> list[float]:
    """Percentiles of sorted values by linear interpolation (numpy's default)."""
    n = len(sorted_values)
    out = []
    for q in qs:
        pos = (n - 1) * q / 100.0
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        a, b = sorted_values[lo], sorted_values[hi]
        out.append(a + (b - a) * frac)
    return out


def summarize(values: list[float]) -> dict[str, Any] | None:
    """``{"count", "mean", "p50", "p90", "p99", "max"}`` of samples, or None if empty."""
    if not values:
        return None
    s = sorted(values)
    p50, p90, p99 = percentiles(s)
    return {
        "count": len(s),
        "mean": math.fsum(s) / len(s),
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "max": s[-1],
    }


class _Interval:
    """What ``record()`` accumulates between two ``log()`` calls."""

    __slots__ = (
        "finished",
        "generation_tokens",
        "pc_hits",
        "pc_queries",
        "preemptions",
        "prompt_tokens",
        "prompt_tokens_cached",
        "records",
        "samples",
        "scheduler_stats",
        "sd_accepted",
        "sd_draft_tokens",
        "sd_drafts",
        "sd_seen",
        "ttft",
    )

    def __init__(self) -> None:
        self.records = 0
        self.samples = 0  # finished requests + TTFT samples held (bounded by QUEUE_MAX)
        self.scheduler_stats: Any = None
        self.pc_queries = 0
        self.pc_hits = 0
        self.prompt_tokens = 0
        self.prompt_tokens_cached = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.ttft: list[float] = []
        self.finished: list[tuple[float, list[Any]]] = []
        self.sd_seen = False
        self.sd_drafts = 0
        self.sd_draft_tokens = 0
        self.sd_accepted = 0


_BAD_SETTINGS_SEEN: set[str] = set()


def _bad_settings_notice(exc: SettingError) -> None:
    with _NOTICE_LOCK:
        if str(exc) in _BAD_SETTINGS_SEEN:
            return
        _BAD_SETTINGS_SEEN.add(str(exc))
    logger.warning("vllm-plugin-stats is off: %s (VLLM_PLUGIN_STRICT=1 makes this fatal)", exc)


def _inactive_notice() -> None:
    global _INACTIVE_NOTICE_DONE
    with _NOTICE_LOCK:
        if _INACTIVE_NOTICE_DONE:
            return
        _INACTIVE_NOTICE_DONE = True
    logger.info(
        "vllm-plugin-stats: JSON Lines stats are off; set %s to a file or directory to turn them on.",
        SETTINGS.env_name("PATH"),
    )


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    """Follow attribute names, returning ``default`` where one is missing or None."""
    for name in names:
        obj = getattr(obj, name, None)
        if obj is None:
            return default
    return obj


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _reason(reason: Any) -> str | None:
    if reason is None:
        return None
    # FinishReason is an IntEnum whose __str__ gives "stop", "length", ...
    return str(reason)


class JsonlStatLogger(StatLoggerBase):
    """vLLM stat logger writing JSON Lines (entry point ``jsonl``)."""

    def __init__(self, vllm_config: Any, engine_index: int = 0, *, path: str | None = None) -> None:
        self.vllm_config = vllm_config
        self.engine_index = engine_index
        self.active = False
        self.closed = False
        self._started = False
        self._lock = threading.Lock()
        self._cur = _Interval()
        self._t0_wall = time.time()
        self._t0 = time.monotonic()
        self._last_log = self._t0
        self._intervals = 0
        self._tot_requests = 0
        self._tot_prompt = 0
        self._tot_generation = 0
        self._tot_preemptions = 0
        self._tot_idle = 0.0
        self._idle_rec: dict[str, Any] | None = None
        self._idle_s = 60.0
        self._queue_max = _writer.DEFAULT_QUEUE_MAX
        self._writer: _writer.JsonlWriter | None = None

        # A bad value: one warning naming the variable and the logger stays
        # off; with VLLM_PLUGIN_STRICT=1 the SettingError stops vLLM instead.
        try:
            setting = path if path is not None else SETTINGS.get("PATH")
            self._requests = bool(SETTINGS.get("REQUESTS"))
            max_bytes, keep = SETTINGS.get("MAX_BYTES"), SETTINGS.get("KEEP")
            self._idle_s = float(SETTINGS.get("IDLE_S"))
            self._queue_max = int(SETTINGS.get("QUEUE_MAX"))
        except SettingError as exc:
            if is_strict():
                raise
            _bad_settings_notice(exc)
            return
        if not setting:
            _inactive_notice()
            return
        self._writer = _writer.acquire(setting, max_bytes, keep, self._queue_max)
        self.path = self._writer.path
        self.active = True
        _LIVE.add(self)
        if not _writer_announced(self._writer):
            logger.info("vllm-plugin-stats: writing JSON Lines stats to %s", self.path)

    # -- vLLM interface ------------------------------------------------------

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if not self.active:
            return
        try:
            with self._lock:
                cur = self._cur
                cur.records += 1
                if scheduler_stats is not None:
                    cur.scheduler_stats = scheduler_stats
                    pcs = scheduler_stats.prefix_cache_stats
                    if pcs is not None:
                        cur.pc_queries += pcs.queries
                        cur.pc_hits += pcs.hits
                    sds = scheduler_stats.spec_decoding_stats
                    if sds is not None:
                        cur.sd_seen = True
                        cur.sd_drafts += sds.num_drafts
                        cur.sd_draft_tokens += sds.num_draft_tokens
                        cur.sd_accepted += sds.num_accepted_tokens
                if iteration_stats is not None:
                    pts = iteration_stats.prompt_token_stats
                    cur.prompt_tokens += pts.total
                    cur.prompt_tokens_cached += pts.cached_tokens
                    cur.generation_tokens += iteration_stats.num_generation_tokens
                    cur.preemptions += iteration_stats.num_preempted_reqs
                    ttft = iteration_stats.time_to_first_tokens_iter
                    if ttft:
                        cur.ttft.extend(ttft)
                        cur.samples += len(ttft)
                    finished = iteration_stats.finished_requests
                    if finished:
                        # One append per step; log() flattens. IterationStats
                        # objects are built fresh for every step by vLLM.
                        cur.finished.append((iteration_stats.iteration_timestamp, finished))
                        cur.samples += len(finished)
                full = cur.samples >= self._queue_max
            if full:
                # log() is late or never called (--disable-log-stats): write
                # an interval now so the samples held stay bounded.
                self._emit_interval()
        except Exception:  # never break vLLM's output loop
            self._disable("record() failed")

    def log_engine_initialized(self) -> None:
        if self.active:
            self._write_start()

    def log(self) -> None:
        if not self.active:
            return
        if self._writer is not None and self._writer.failed:
            self.active = False
            return
        try:
            self._write_start()
            self._emit_interval()
        except Exception:
            self._disable("log() failed")

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Write the last interval and the ``stop`` record, then drain the writer."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        writer = self._writer
        if writer is None:
            return
        try:
            if self.active and not writer.failed:
                self._write_start()
                self._emit_interval(final=True)
                writer.put(self._stop_record())
        except Exception:  # pragma: no cover - defensive
            logger.warning("vllm-plugin-stats: could not write the stop record", exc_info=True)
        finally:
            self.active = False
            self._writer = None
            _LIVE.discard(self)
            _writer.release(writer)

    shutdown = close

    def __del__(self) -> None:
        try:
            if not getattr(self, "closed", True):
                self.close()
        except Exception:  # pragma: no cover - interpreter teardown
            pass

    # -- records -------------------------------------------------------------

    def _head(self, kind: str, ts: float | None = None) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "type": kind,
            "ts": time.time() if ts is None else ts,
            "engine": self.engine_index,
        }

    def _write_start(self) -> None:
        if self._started or self._writer is None:
            return
        self._started = True
        self._writer.put(self._start_record())

    def _start_record(self) -> dict[str, Any]:
        cfg = self.vllm_config
        model = _get(cfg, "model_config")
        cache = _get(cfg, "cache_config")
        sched = _get(cfg, "scheduler_config")
        par = _get(cfg, "parallel_config")
        try:
            import vllm

            vllm_version = getattr(vllm, "__version__", None)
        except Exception:  # pragma: no cover
            vllm_version = None
        rec = self._head("start", self._t0_wall)
        rec.update(
            {
                "vllm_version": vllm_version,
                "plugin_version": __version__,
                "pid": os.getpid(),
                "model": _plain(_get(model, "model")),
                "served_model_name": _plain(_get(model, "served_model_name")),
                "dtype": _plain(_get(model, "dtype")),
                "max_model_len": _get(model, "max_model_len", default=_get(sched, "max_model_len")),
                "max_num_seqs": _get(sched, "max_num_seqs"),
                "max_num_batched_tokens": _get(sched, "max_num_batched_tokens"),
                "block_size": _get(cache, "block_size"),
                "num_gpu_blocks": _get(cache, "num_gpu_blocks"),
                "kv_cache_dtype": _plain(_get(cache, "cache_dtype")),
                "enable_prefix_caching": _get(cache, "enable_prefix_caching"),
                "tensor_parallel_size": _get(par, "tensor_parallel_size"),
                "pipeline_parallel_size": _get(par, "pipeline_parallel_size"),
                "data_parallel_size": _get(par, "data_parallel_size"),
                "device": _plain(_get(cfg, "device_config", "device_type")),
                "speculative_method": _plain(_get(cfg, "speculative_config", "method")),
                "num_speculative_tokens": _get(cfg, "speculative_config", "num_speculative_tokens"),
            }
        )
        return rec

    def _emit_interval(self, final: bool = False) -> None:
        """Write the interval since the previous one; idle ones are merged.

        An idle interval (nothing running, waiting, finished or computed) is
        held and merged with the idle ones that follow; the merged record is
        written once it spans ``IDLE_S`` seconds, before the next busy
        interval, or at close (``final``).
        """
        now = time.monotonic()
        with self._lock:
            cur, self._cur = self._cur, _Interval()
            last, self._last_log = self._last_log, now
        if self._writer is None:
            return
        elapsed = now - last
        sched = cur.scheduler_stats
        finished = [req for _, batch in cur.finished for req in batch]

        e2e: list[float] = []
        queue: list[float] = []
        tpot: list[float] = []
        reasons: dict[str, int] = {}
        for req in finished:
            e2e.append(req.e2e_latency)
            queue.append(req.queued_time)
            if req.num_generation_tokens > 1:
                tpot.append(req.mean_time_per_output_token)
            r = _reason(req.finish_reason)
            if r is not None:
                reasons[r] = reasons.get(r, 0) + 1

        spec = None
        if cur.sd_seen:
            spec = {
                "drafts": cur.sd_drafts,
                "draft_tokens": cur.sd_draft_tokens,
                "accepted_tokens": cur.sd_accepted,
                "acceptance_rate": (cur.sd_accepted / cur.sd_draft_tokens) if cur.sd_draft_tokens else None,
            }

        running = waiting = deferred = 0
        kv_usage = None
        if sched is not None:
            running = sched.num_running_reqs
            deferred = getattr(sched, "num_skipped_waiting_reqs", 0) or 0
            waiting = sched.num_waiting_reqs + deferred
            kv_usage = sched.kv_cache_usage

        dropped = self._writer.take_dropped()
        idle = (not finished and not cur.ttft and not running and not waiting and not dropped
                and not cur.prompt_tokens and not cur.generation_tokens and not cur.preemptions
                and not cur.pc_queries and not cur.sd_drafts)
        self._tot_requests += len(finished)
        self._tot_prompt += cur.prompt_tokens
        self._tot_generation += cur.generation_tokens
        self._tot_preemptions += cur.preemptions

        rec = self._head("interval")
        rec.update(
            {
                "interval_s": elapsed,
                "running": running,
                "waiting": waiting,
                "waiting_deferred": deferred,
                "kv_cache_usage": kv_usage,
                "prefix_cache": {
                    "queries": cur.pc_queries,
                    "hits": cur.pc_hits,
                    "hit_rate": (cur.pc_hits / cur.pc_queries) if cur.pc_queries else None,
                },
                "prompt_tokens": cur.prompt_tokens,
                "prompt_tokens_cached": cur.prompt_tokens_cached,
                "generation_tokens": cur.generation_tokens,
                "prompt_throughput": cur.prompt_tokens / elapsed if elapsed > 0 else 0.0,
                "generation_throughput": cur.generation_tokens / elapsed if elapsed > 0 else 0.0,
                "preemptions": cur.preemptions,
                "finished_requests": len(finished),
                "finish_reasons": reasons,
                "ttft_s": summarize(cur.ttft),
                "tpot_s": summarize(tpot),
                "e2e_latency_s": summarize(e2e),
                "queue_time_s": summarize(queue),
                "spec_decode": spec,
                "dropped_records": dropped,
                "idle": idle,
                "coalesced": 1,
            }
        )
        if idle:
            self._tot_idle += elapsed
        if idle and (self._idle_s > 0 or final):
            held = self._idle_rec
            if held is None and final:
                return  # an idle tail at close: counted in the stop record's uptime_s and idle_s
            if held is None:
                held = self._idle_rec = rec
            else:
                held["ts"] = rec["ts"]
                held["interval_s"] += elapsed
                held["coalesced"] += 1
                if rec["kv_cache_usage"] is not None:
                    held["kv_cache_usage"] = rec["kv_cache_usage"]
            if final or held["interval_s"] >= self._idle_s:
                self._put_held_idle()
            return
        self._put_held_idle()
        self._intervals += 1
        self._writer.put(rec)
        if self._requests:
            for ts, batch in cur.finished:
                for req in batch:
                    self._writer.put(self._request_record(req, ts), droppable=True)

    def _put_held_idle(self) -> None:
        held, self._idle_rec = self._idle_rec, None
        if held is not None and self._writer is not None:
            self._intervals += 1
            self._writer.put(held)

    def _request_record(self, req: Any, ts: float) -> dict[str, Any]:
        rec = self._head("request", ts)
        e2e = req.e2e_latency
        decode = req.decode_time
        rec.update(
            {
                "request_id": req.request_id,
                "finish_reason": _reason(req.finish_reason),
                "prompt_tokens": req.num_prompt_tokens,
                "generation_tokens": req.num_generation_tokens,
                "cached_tokens": getattr(req, "num_cached_tokens", None),
                "max_tokens": req.max_tokens_param,
                "preemptions": req.num_preemptions,
                "e2e_latency_s": e2e,
                "ttft_s": max(0.0, e2e - decode),
                "queue_time_s": req.queued_time,
                "prefill_time_s": req.prefill_time,
                "decode_time_s": decode,
                "inference_time_s": req.inference_time,
                "tpot_s": req.mean_time_per_output_token,
            }
        )
        return rec

    def _stop_record(self) -> dict[str, Any]:
        rec = self._head("stop")
        rec.update(
            {
                "uptime_s": time.monotonic() - self._t0,
                "intervals": self._intervals,
                "requests": self._tot_requests,
                "prompt_tokens": self._tot_prompt,
                "generation_tokens": self._tot_generation,
                "preemptions": self._tot_preemptions,
                "idle_s": self._tot_idle,
                "dropped_records": self._writer.dropped_total if self._writer is not None else 0,
            }
        )
        return rec

    def _disable(self, what: str) -> None:
        self.active = False
        logger.warning(
            "vllm-plugin-stats: %s for engine %s; JSON Lines stats are disabled for it.",
            what,
            self.engine_index,
            exc_info=True,
        )


_ANNOUNCED: weakref.WeakSet[_writer.JsonlWriter] = weakref.WeakSet()


def _writer_announced(writer: _writer.JsonlWriter) -> bool:
    if writer in _ANNOUNCED:
        return True
    _ANNOUNCED.add(writer)
    return False


def close_all_loggers() -> None:
    """Close every live logger, then every writer (registered with atexit)."""
    for stat_logger in list(_LIVE):
        try:
            stat_logger.close()
        except Exception:  # pragma: no cover
            pass
    _writer.close_all()


atexit.register(close_all_loggers)
