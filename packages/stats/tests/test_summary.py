"""``vllm-plugin-stats summary`` and ``plot`` on files the real logger wrote
(several engines, rotation, a restart, torn and corrupt lines). No engine."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
from helpers import finish, iteration, sched

from vllm_plugin_stats import cli, summary
from vllm_plugin_stats.logger import JsonlStatLogger


def _write_run(vllm_config, path: str, n: int, engines: int = 2) -> list[JsonlStatLogger]:
    loggers = [JsonlStatLogger(vllm_config, e, path=path) for e in range(engines)]
    for lg in loggers:
        lg.log_engine_initialized()
    for i in range(n):
        for e, lg in enumerate(loggers):
            it = iteration(gen=5, prompt=7, ttfts=[0.01 * (i + 1)])
            finish(it, f"e{e}-{i}", arrival_ago=0.1 * (i + 1), queued=0.001 * i, prefill=0.01,
                   decode=0.02 * (i + 1), gen_tokens=5)
            lg.record(sched(running=1, waiting=i % 3, queries=10, hits=i % 10, usage=0.1 * (i % 10)), it)
            lg.log()
    for lg in loggers:
        lg.close()
    return loggers


@pytest.fixture()
def two_runs(vllm_config, tmp_path, monkeypatch):
    """Two runs (a restart appending to the same file), two engines each,
    rotated every 4 KB, with a torn and a corrupt line."""
    out = tmp_path / "stats.jsonl"
    monkeypatch.setenv("VLLM_PLUGIN_STATS_REQUESTS", "1")
    monkeypatch.setenv("VLLM_PLUGIN_STATS_MAX_BYTES", "4000")
    monkeypatch.setenv("VLLM_PLUGIN_STATS_KEEP", "50")
    _write_run(vllm_config, str(out), 20)
    with open(out, "a") as fh:
        fh.write('{"type":"interval","engine":0,"running":\n')  # corrupt
    _write_run(vllm_config, str(out), 10)
    return out


def test_summary_totals_match_the_stop_records(two_runs):
    files = [p.name for p in two_runs.parent.iterdir() if not p.name.startswith(".")]
    assert len(files) > 3  # the runs span rotated files
    problems: list[str] = []
    runs = summary.summarize_files([two_runs], problems.append)
    assert len(problems) == 1 and "skipped a line that is not JSON" in problems[0]
    assert [r["requests"] for r in runs] == [40, 20]
    for run in runs:
        assert run["engines"] == [0, 1] and run["complete"]
        assert run["generation_tokens"] == 5 * run["requests"]
        assert run["prompt_tokens"] == 7 * run["requests"]
        assert run["latency_s"]["e2e_latency_s"]["source"] == "requests"
        assert run["latency_s"]["e2e_latency_s"]["count"] == run["requests"]
    first = runs[0]
    # e2e of the 20 requests per engine: 0.1 .. 2.0 s; exact percentiles
    assert first["latency_s"]["e2e_latency_s"]["p50"] == pytest.approx(1.05)
    assert first["latency_s"]["e2e_latency_s"]["max"] == pytest.approx(2.0)
    assert first["prefix_cache_hit_rate"] == pytest.approx(sum(i % 10 for i in range(20)) / 200)
    assert first["uptime_s"] > 0 and first["generation_throughput"] == pytest.approx(200 / first["uptime_s"])


def test_torn_line_skipped_with_its_line_number(vllm_config, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    _write_run(vllm_config, str(out), 3, engines=1)
    text = out.read_text()
    out.write_text(text[:-15])  # a crash in the middle of the stop record
    assert cli.main(["summary", str(out)]) == 0
    captured = capsys.readouterr()
    n = len(text.splitlines())
    assert f"{out}:{n}: skipped a line that is not JSON" in captured.err
    assert "NO stop record" in captured.out and "requests          3" in captured.out
    out.write_bytes(b"\x00\xff garbage\n[1, 2]\n")
    assert cli.main(["summary", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{out}:1:" in err and f"{out}:2: skipped a line that is not a stats record" in err


def test_summary_json_and_table(two_runs, capsys):
    assert cli.main(["summary", "--json", str(two_runs)]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["requests"] for r in runs] == [40, 20]
    assert cli.main(["summary", str(two_runs)]) == 0
    table = capsys.readouterr().out
    assert table.count("run ") == 2 and "TTFT" in table and "e2e" in table and "prefix cache" in table


def test_summary_accounts_idle_time(vllm_config, tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("VLLM_PLUGIN_STATS_IDLE_S", "0.2")
    out = tmp_path / "s.jsonl"
    lg = JsonlStatLogger(vllm_config, path=str(out))
    for _ in range(10):
        time.sleep(0.05)
        lg.log()
    lg.close()
    (run,) = summary.summarize_files([out], print)
    assert run["idle_s"] == pytest.approx(run["uptime_s"], abs=0.05) and run["idle_s"] >= 0.5
    assert run["intervals"] < 10


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["summary", str(tmp_path / "nope.jsonl")]) == 1
    assert "no such file" in capsys.readouterr().err


def _png_size(path) -> tuple[int, int]:
    data = open(path, "rb").read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_png_four_panels(two_runs, tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra: pip install 'vllm-plugin-stats[plot]'")
    from vllm_plugin_stats import plot

    png = tmp_path / "report.png"
    fig = plot.plot_files([two_runs], png, print)
    assert [ax.get_title(loc="left") for ax in fig.axes] == list(plot.PANELS)
    assert all(ax.lines for ax in fig.axes)  # every panel has data
    assert _png_size(png) == (1000, 1000) and png.stat().st_size > 20_000


def test_plot_cli_html_and_bad_output(two_runs, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot extra: pip install 'vllm-plugin-stats[plot]'")
    html = tmp_path / "report.html"
    assert cli.main(["plot", str(two_runs), "-o", str(html)]) == 0
    page = html.read_text()
    assert "data:image/png;base64," in page and "run 2" in page
    with pytest.raises(SystemExit) as exc:
        cli.main(["plot", str(two_runs), "-o", str(tmp_path / "report.pdf")])
    assert exc.value.code == 2


def test_cli_runs_as_a_module(two_runs):
    """The console script's code path in a fresh process (imports no vLLM)."""
    code = ("import sys, vllm_plugin_stats.cli as c; r = c.main(sys.argv[1:]); "
            "assert 'vllm' not in sys.modules, 'imported vLLM'; sys.exit(r)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", code, "summary", "--json", str(two_runs)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)) == 2
