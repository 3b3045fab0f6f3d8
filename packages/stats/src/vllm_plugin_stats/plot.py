"""``vllm-plugin-stats plot``: four panels over time from the ``interval`` records.

Throughput (prompt and generation tokens/s), running/waiting requests, KV
cache usage and latency percentiles (TTFT, TPOT, e2e: p50 and p99), one line
per run and engine. Each value is drawn as a step over the interval it
covers, so a coalesced idle record shows as one flat span. A value with no
neighbour to join (a series of one point, a zero-length interval, or a span
too short to see on the time axis, such as the latency of the one interval
in which requests finished) is drawn as a marker too. Needs matplotlib
(``pip install 'vllm-plugin-stats[plot]'``); it is imported only here.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Iterable
from typing import Any

from vllm_plugin_stats._reader import Run, Warn, read_runs

__all__ = ["PANELS", "figure", "plot_files", "write"]

#: Panel titles, top to bottom.
PANELS = ("Throughput (tokens/s)", "Requests running / waiting", "KV cache usage (%)", "Latency (s)")
#: A run of consecutive values shorter than this share of the time axis is
#: drawn with markers as well as a line (a line that short is hard to see).
SHORT_SPAN = 0.01
#: Figure size in inches at ``DPI``: 1000 x 1000 pixels.
SIZE = (10.0, 10.0)
DPI = 100


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'vllm-plugin-stats[plot]'") from None
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure


def _series(run: Run, engine: int, t0: float) -> dict[str, list[Any]]:
    xs: list[float] = []
    out: dict[str, list[Any]] = {k: [] for k in (
        "prompt", "gen", "running", "waiting", "kv", "ttft50", "ttft99", "tpot50", "tpot99", "e2e50", "e2e99")}
    for r in run.records:
        if r["type"] != "interval" or int(r.get("engine", 0) or 0) != engine:
            continue
        end = float(r["ts"]) - t0
        begin = end - float(r.get("interval_s") or 0.0)
        kv = r.get("kv_cache_usage")

        def q(key: str, p: str, rec: dict[str, Any] = r) -> float | None:
            return (rec.get(key) or {}).get(p)

        row = {
            "prompt": r.get("prompt_throughput"), "gen": r.get("generation_throughput"),
            "running": r.get("running"), "waiting": r.get("waiting"),
            "kv": kv * 100 if isinstance(kv, (int, float)) else None,
            "ttft50": q("ttft_s", "p50"), "ttft99": q("ttft_s", "p99"),
            "tpot50": q("tpot_s", "p50"), "tpot99": q("tpot_s", "p99"),
            "e2e50": q("e2e_latency_s", "p50"), "e2e99": q("e2e_latency_s", "p99"),
        }
        # two points per record: the value holds over [begin, end]
        for x in (begin, end):
            xs.append(x)
            for k, v in row.items():
                out[k].append(float("nan") if v is None else v)
    out["x"] = xs
    return out


def _isolated(x: list[float], y: list[Any], min_span: float) -> tuple[list[float], list[float]]:
    """The points of ``(x, y)`` in runs of consecutive finite values that span
    less than ``min_span`` on the x axis (a lone point spans 0)."""
    px: list[float] = []
    py: list[float] = []
    run: list[int] = []
    for i in range(len(x) + 1):
        if i < len(x) and y[i] is not None and math.isfinite(y[i]):
            run.append(i)
            continue
        if run and (x[run[-1]] - x[run[0]] < min_span or x[run[-1]] == x[run[0]]):
            for j in run:
                if not px or (px[-1], py[-1]) != (x[j], y[j]):
                    px.append(x[j])
                    py.append(y[j])
        run = []
    return px, py


def _draw(ax: Any, x: list[float], y: list[Any], min_span: float, **kw: Any) -> None:
    """A line, plus a marker on each value the line alone would not show."""
    (line,) = ax.plot(x, y, **kw)
    px, py = _isolated(x, y, min_span)
    if px:
        ax.plot(px, py, linestyle="none", marker="o", markersize=5, color=line.get_color(),
                alpha=kw.get("alpha"))


def figure(runs: list[Run]) -> Any:
    """A matplotlib ``Figure`` with the four panels of :data:`PANELS`."""
    Figure = _matplotlib()
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    times = [float(r["ts"]) - float(r.get("interval_s") or 0.0)
             for run in runs for r in run.records if r["type"] == "interval"]
    t0 = min(times, default=0.0)
    ends = [float(r["ts"]) for run in runs for r in run.records if r["type"] == "interval"]
    min_span = SHORT_SPAN * (max(ends, default=t0) - t0)
    for i, run in enumerate(runs, 1):
        for engine in run.engines:
            s = _series(run, engine, t0)
            if not s["x"]:
                continue
            tag = (f"run {i} " if len(runs) > 1 else "") + (f"engine {engine} " if len(run.engines) > 1 else "")
            x = s["x"]
            _draw(axes[0], x, s["gen"], min_span, label=f"{tag}generation")
            _draw(axes[0], x, s["prompt"], min_span, label=f"{tag}prompt", linestyle="--")
            _draw(axes[1], x, s["running"], min_span, label=f"{tag}running")
            _draw(axes[1], x, s["waiting"], min_span, label=f"{tag}waiting", linestyle="--")
            _draw(axes[2], x, s["kv"], min_span, label=f"{tag}KV usage")
            for key, name, style in (("ttft", "TTFT", "-"), ("tpot", "TPOT", "-."), ("e2e", "e2e", ":")):
                _draw(axes[3], x, s[f"{key}50"], min_span, label=f"{tag}{name} p50", linestyle=style)
                _draw(axes[3], x, s[f"{key}99"], min_span, label=f"{tag}{name} p99", linestyle=style,
                      alpha=0.6)
    for ax, title in zip(axes, PANELS, strict=True):
        ax.set_title(title, loc="left", fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper right", ncols=2)
    axes[2].set_ylim(bottom=0)
    axes[-1].set_xlabel("time since the first interval (s)")
    title = ", ".join(sorted({str(r.starts[min(r.starts)].get("served_model_name") or "?")
                              for r in runs if r.starts})) or "vLLM"
    fig.suptitle(f"vllm-plugin-stats: {title}", fontsize=11)
    return fig


def write(fig: Any, output: str | os.PathLike[str], summary_text: str = "") -> None:
    """Save as PNG, or as HTML embedding the PNG and the summary table."""
    out = os.fspath(output)
    if out.lower().endswith(".html"):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        page = ("<!doctype html><meta charset='utf-8'><title>vllm-plugin-stats report</title>"
                f"<pre>{html.escape(summary_text)}</pre>"
                f"<img alt='vllm-plugin-stats chart' src='data:image/png;base64,{data}'>\n")
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(page)
    elif out.lower().endswith(".png"):
        fig.savefig(out, format="png", dpi=DPI)
    else:
        raise ValueError(f"output {out!r}: the name must end in .png or .html")


def plot_files(paths: Iterable[str | os.PathLike[str]], output: str | os.PathLike[str], warn: Warn,
               summary_text: str = "") -> Any:
    """Read the files, draw the figure, write it to ``output``; returns the figure."""
    fig = figure(read_runs(paths, warn))
    write(fig, output, summary_text)
    return fig
