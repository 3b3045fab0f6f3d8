"""Registration guard: once per process, failure isolation, strict mode."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
from pathlib import Path

import pytest

from vllm_plugin_core import guard
from vllm_plugin_core.guard import PluginRegistrationError, plugin_entry_point


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
    monkeypatch.delenv("VLLM_PLUGIN_STRICT", raising=False)
    guard.reset_for_tests()
    yield
    guard.reset_for_tests()


def test_body_runs_once_across_threads():
    runs = []
    barrier = threading.Barrier(8)

    @plugin_entry_point("threaded")
    def register():
        runs.append(threading.get_ident())
        return "x"

    def call():
        barrier.wait()
        register()

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(runs) == 1
    assert register.calls == 8
    assert register.ran


def test_logs_what_it_registered(caplog):
    @plugin_entry_point("logs-it")
    def register():
        return ["ArchA", "ArchB"]

    with caplog.at_level(logging.INFO, logger="vllm.plugins.core"):
        assert register() == ["ArchA", "ArchB"]
        assert register() is None
    lines = [r.getMessage() for r in caplog.records if "logs-it" in r.getMessage()]
    assert len(lines) == 1 and "ArchA, ArchB" in lines[0]


def test_failure_logs_one_error_with_plugin_cause_and_fix(caplog):
    @plugin_entry_point("fails", fix="set VLLM_PLUGIN_FAILS_X=1")
    def register():
        raise KeyError("missing thing")

    with caplog.at_level(logging.INFO, logger="vllm.plugins.core"):
        assert register() is None
        assert register() is None  # not retried, not logged again
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    msg = errors[0].getMessage()
    assert "fails" in msg and "missing thing" in msg and "VLLM_PLUGIN_FAILS_X=1" in msg
    assert "VLLM_PLUGIN_STRICT=1" in msg


def test_strict_mode_propagates(monkeypatch):
    monkeypatch.setenv("VLLM_PLUGIN_STRICT", "1")

    @plugin_entry_point("fails-strict")
    def register():
        raise RuntimeError("boom")

    with pytest.raises(PluginRegistrationError, match="fails-strict.*boom"):
        register()


def test_malformed_strict_value_logs_one_error_and_is_off(monkeypatch, caplog):
    """``VLLM_PLUGIN_STRICT=maybe`` is no request for fatal failures: one error
    naming the variable, then the failure is contained as without strict mode."""
    monkeypatch.setenv("VLLM_PLUGIN_STRICT", "maybe")

    @plugin_entry_point("fails-maybe")
    def register():
        raise RuntimeError("boom")

    with caplog.at_level(logging.INFO, logger="vllm.plugins.core"):
        assert register() is None
        assert guard.is_strict() is False
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    bad = [e for e in errors if "VLLM_PLUGIN_STRICT='maybe' is not valid" in e]
    assert len(bad) == 1 and "stays off" in bad[0] and bad[0].count("true/false") == 1, errors
    assert sum("fails-maybe failed to register" in e for e in errors) == 1


def test_version_gate_skips_out_of_range(caplog):
    runs = []

    @plugin_entry_point("future-only", vllm=">=99")
    def register():
        runs.append(1)

    with caplog.at_level(logging.WARNING, logger="vllm.plugins.core"):
        register()
    assert runs == []
    assert any("future-only supports vLLM >=99" in r.getMessage() for r in caplog.records)


def _child(count_file: str, barrier_n: int) -> None:
    os.environ["VPC_TEST_COUNT_FILE"] = count_file
    import vpc_test_healthy

    threads = [threading.Thread(target=vpc_test_healthy.register) for _ in range(barrier_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    vpc_test_healthy.register()


def test_once_per_process_with_spawned_processes(test_plugins_dir: Path, tmp_path: Path, monkeypatch):
    """vLLM spawns its engine and workers with the ``spawn`` method: each new
    process must register exactly once, however often it is called."""
    import sys

    monkeypatch.syspath_prepend(str(test_plugins_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(test_plugins_dir), *sys.path]))
    count_file = tmp_path / "count"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_child, args=(str(count_file), 4)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    pids = count_file.read_text().split()
    assert len(pids) == 3 and len(set(pids)) == 3


LOAD = (
    "from vllm.plugins import load_general_plugins; load_general_plugins(); "
    "load_general_plugins.__globals__['plugins_loaded'] = False; load_general_plugins(); "
    "print('VLLM STILL RUNNING')"
)


@pytest.mark.engine
def test_real_vllm_loader_default_and_strict(run_python, test_plugins_dir: Path, tmp_path: Path):
    """vLLM's own loader calls the failing plugin: one error, vLLM goes on;
    the healthy plugin registers once although vLLM calls it twice. With
    VLLM_PLUGIN_STRICT=1 the failure stops the process."""
    count = tmp_path / "count"
    env = {"VLLM_PLUGINS": "core,test_healthy,test_failing", "VPC_TEST_COUNT_FILE": str(count)}
    out = run_python(LOAD, env=env, pythonpath=test_plugins_dir)
    assert out.returncode == 0, out.stderr
    assert "VLLM STILL RUNNING" in out.stdout
    log = out.stdout + out.stderr
    assert log.count("Plugin vpc-test-failing failed to register") == 1
    assert "the failing test plugin always fails" in log and "set VPC_TEST_FIXED=1" in log
    assert count.read_text().split() == [str(int(count.read_text().split()[0]))]  # exactly one line

    strict = run_python(LOAD, env={**env, "VLLM_PLUGIN_STRICT": "1"}, pythonpath=test_plugins_dir)
    assert strict.returncode != 0
    assert "VLLM STILL RUNNING" not in strict.stdout
    assert "PluginRegistrationError" in strict.stderr and "vpc-test-failing" in strict.stderr
