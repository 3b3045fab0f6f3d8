"""``vllm-plugin-stats plot``: values the step lines alone would not show.

A series of one point (a record with no length, as ``interval_s`` 0 or
missing) draws no line, and a one-second step on a five-minute axis is a
speck: both get a marker. No engine."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("matplotlib", reason="the plot extra: pip install 'vllm-plugin-stats[plot]'")

from vllm_plugin_stats import plot


def _interval(ts: float, interval_s: float | None, *, busy: bool) -> dict:
    rec = {"type": "interval", "ts": ts, "engine": 0, "pid": 1, "running": 1 if busy else 0, "waiting": 0,
           "kv_cache_usage": 0.05 if busy else 0.0, "prompt_throughput": 40.0 if busy else 0.0,
           "generation_throughput": 16.0 if busy else 0.0, "finished_requests": 1 if busy else 0,
           "idle": not busy}
    if interval_s is not None:
        rec["interval_s"] = interval_s
    if busy:
        for key, value in (("ttft_s", 0.05), ("tpot_s", 0.01), ("e2e_latency_s", 0.2)):
            rec[key] = {"count": 1, "mean": value, "p50": value, "p90": value, "p99": value, "max": value}
    return rec


def _write(path, intervals: list[dict]) -> None:
    t0 = 1_000_000.0
    recs = [{"type": "start", "ts": t0, "engine": 0, "pid": 1, "served_model_name": "tiny"}]
    recs += [{**r, "ts": t0 + r["ts"]} for r in intervals]
    recs.append({"type": "stop", "ts": t0 + intervals[-1]["ts"] + 1, "engine": 0, "pid": 1})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _visible(ax) -> list[tuple[float, float]]:
    """Points a reader sees in ``ax``: markers, and the ends of line segments
    that have a length on the x axis."""
    seen: list[tuple[float, float]] = []
    for line in ax.lines:
        xs, ys = (list(map(float, d)) for d in line.get_data())
        finite = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
        if line.get_marker() not in (None, "", " ", "None", "none"):
            seen += finite
        elif line.get_linestyle() not in ("None", "none", "", " "):
            for i in range(len(xs) - 1):
                if math.isfinite(ys[i]) and math.isfinite(ys[i + 1]) and xs[i + 1] > xs[i]:
                    seen += [(xs[i], ys[i]), (xs[i + 1], ys[i + 1])]
    return seen


def test_a_single_point_series_is_drawn_as_a_marker(tmp_path):
    # one busy interval with no length (interval_s missing or 0) between idle ones
    stats = tmp_path / "stats.jsonl"
    _write(stats, [_interval(10.0, 10.0, busy=False), _interval(10.0, None, busy=True),
                   _interval(20.0, 10.0, busy=False)])
    fig = plot.plot_files([stats], tmp_path / "chart.png", print)
    latency = fig.axes[3]
    ys = {round(y, 6) for _, y in _visible(latency)}
    assert {0.05, 0.01, 0.2} <= ys  # TTFT, TPOT and e2e: each a marker
    for ax in fig.axes:
        assert _visible(ax), ax.get_title(loc="left")


def test_a_short_step_on_a_long_axis_gets_markers(tmp_path):
    # requests finished in one 1 s interval of a 300 s chart
    stats = tmp_path / "stats.jsonl"
    _write(stats, [_interval(150.0, 150.0, busy=False), _interval(151.0, 1.0, busy=True),
                   _interval(300.0, 149.0, busy=False)])
    fig = plot.plot_files([stats], tmp_path / "chart.png", print)
    marked = [line for line in fig.axes[3].lines if line.get_marker() not in (None, "", " ", "None", "none")]
    assert {round(float(y), 6) for line in marked for y in line.get_ydata()} >= {0.05, 0.01, 0.2}


def test_long_series_keep_plain_lines(tmp_path):
    stats = tmp_path / "stats.jsonl"
    _write(stats, [_interval(float(t), 1.0, busy=True) for t in range(1, 31)])
    fig = plot.plot_files([stats], tmp_path / "chart.png", print)
    for ax in fig.axes:
        assert _visible(ax)
        assert all(line.get_marker() in (None, "", " ", "None", "none") for line in ax.lines)
    # the legend names each series once (markers carry no label of their own)
    labels = [t.get_text() for t in fig.axes[3].get_legend().get_texts()]
    assert len(labels) == len(set(labels)) == 6
