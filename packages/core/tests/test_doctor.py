"""``vllm-plugins doctor`` and ``list`` against real installed plugins."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "vllm_plugin_core.cli"]


def run_cli(*args: str, pythonpath: Path | None = None, env: dict[str, str] | None = None):
    full = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}
    if pythonpath is not None:
        full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), full.get("PYTHONPATH")]))
    full.update(env or {})
    return subprocess.run([*CLI, *args], env=full, capture_output=True, text=True, timeout=600)


def test_console_script_is_installed():
    assert shutil.which("vllm-plugins") or Path(sys.executable).with_name("vllm-plugins").exists()


def test_list_is_metadata_only_and_shows_core():
    out = run_cli("list", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    rows = {(r["group"], r["name"]): r for r in data["plugins"]}
    core = rows[("vllm.general_plugins", "core")]
    assert core["distribution"] == "vllm-plugin-core" and core["imports"] == "not checked"
    assert core["vllm_range"] and core["in_range"] is True
    assert data["environment"]["vllm_version"]


@pytest.mark.engine
def test_doctor_broken_filtered_healthy(test_plugins_dir: Path):
    """A venv path holding a broken plugin, a filtered plugin and a healthy one."""
    env = {"VLLM_PLUGINS": "core,test_healthy,test_broken"}
    out = run_cli("doctor", "--json", pythonpath=test_plugins_dir, env=env)
    assert out.returncode == 1, "a broken plugin makes doctor exit non-zero"
    data = json.loads(out.stdout)
    rows = {r["name"]: r for r in data["plugins"]}

    healthy = rows["test_healthy"]
    assert (healthy["imports"], healthy["enabled"], healthy["broken"]) == ("ok", True, False)
    assert healthy["distribution"] == "vpc-test-healthy" and healthy["version"] == "1.0"

    filtered = rows["test_failing"]
    assert filtered["enabled"] is False and "filtered out by VLLM_PLUGINS" in filtered["filter_note"]

    broken = rows["test_broken"]
    assert broken["broken"] and broken["imports"] == "error"
    assert "vpc_test_module_that_does_not_exist" in broken["problem"]
    assert "vpc-test-broken" in broken["fix"] and "VLLM_PLUGINS" in broken["fix"]

    # The real platform vLLM would activate in this session: its CPU platform on
    # a CPU build; none on a CUDA wheel without GPU (0.33 here).
    from vllm_plugin_core.testing.platform import vllm_has_cpu_kernels

    expected = "CpuPlatform" if vllm_has_cpu_kernels() else "UnspecifiedPlatform"
    assert data["environment"]["platform"].endswith(expected), data["environment"]["platform"]

    # The table view of the same report (rendered here rather than by a second
    # doctor run, which would import every plugin again: ~16 s a session).
    from dataclasses import fields

    from vllm_plugin_core.cli import Row, _table

    names = {f.name for f in fields(Row)}
    table = _table([Row(**{k: v for k, v in r.items() if k in names}) for r in data["plugins"]],
                   data["environment"])
    assert "BROKEN" in table and "fix:" in table
    assert f"Platform vLLM would activate: {data['environment']['platform']}" in table


@pytest.mark.engine
def test_doctor_survives_a_hanging_plugin(tmp_path: Path):
    """A plugin whose import hangs costs one timeout; the rest is still checked."""
    pkg = tmp_path / "src"
    (pkg / "vpc_hang").mkdir(parents=True)
    (pkg / "vpc_hang" / "__init__.py").write_text("import time\ntime.sleep(600)\n")
    dist = pkg / "vpc_hang-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vpc-hang\nVersion: 1.0\n")
    # The first entry point doctor imports (general plugins, sorted by name), so
    # the killed child had imported nothing else and the run pays one import pass.
    (dist / "entry_points.txt").write_text("[vllm.general_plugins]\naa_hang = vpc_hang:register\n")
    # 20 s: well above the slowest real import here (the first to pull in vLLM
    # and torch, 6 to 8 s on 2 cores), so only the hanging one may time out.
    out = run_cli("doctor", "--json", "--timeout", "20", pythonpath=pkg)
    data = json.loads(out.stdout)
    rows = {(r["group"], r["name"]): r for r in data["plugins"]}
    hang = rows.pop(("vllm.general_plugins", "aa_hang"))
    assert hang["imports"] == "timeout" and "within 20 s" in hang["problem"] and out.returncode == 1
    assert ("vllm.general_plugins", "core") in rows
    assert {k: r["imports"] for k, r in rows.items() if r["imports"] != "ok"} == {}, "the rest is checked"
    assert data["environment"]["platform"] and data["environment"]["platform_error"] is None


@pytest.mark.parametrize(("running", "allow", "broken"), [
    ("0.35.0", "1", False),  # newer than tested, relaxed: loads, reported as untested
    ("0.35.0", None, True),  # newer, not relaxed: out of range
    ("0.30.0", "1", True),  # older: the variable does not relax the lower bound
])
def test_doctor_reports_the_untested_relaxation(monkeypatch, running, allow, broken):
    """The doctor's range check follows VLLM_PLUGINS_ALLOW_UNTESTED_VLLM (the
    running vLLM monkeypatched; metadata only, nothing imported)."""
    from packaging.version import Version

    from vllm_plugin_core import cli
    from vllm_plugin_core.version import ALLOW_UNTESTED_VAR, SUPPORTED_VLLM

    monkeypatch.setattr(cli, "vllm_version", lambda: Version(running))
    monkeypatch.setattr(cli, "declared_vllm_range", lambda dist: SUPPORTED_VLLM)
    if allow is None:
        monkeypatch.delenv(ALLOW_UNTESTED_VAR, raising=False)
    else:
        monkeypatch.setenv(ALLOW_UNTESTED_VAR, allow)
    rows = cli.collect()
    core = next(r for r in rows if (r.group, r.name) == ("vllm.general_plugins", "core"))
    assert core.in_range is False and core.broken is broken
    table = cli._table(rows, {**cli.environment(), "VLLM_PLUGINS": None})
    if broken:
        assert "untested" not in core.details and "(OUT)" in table and f"running vLLM is {running}" in core.problem
    else:
        assert f"vLLM {running} is newer than" in core.details["untested"]
        assert "(UNTESTED)" in table and f"load anyway: {ALLOW_UNTESTED_VAR}=1" in table
