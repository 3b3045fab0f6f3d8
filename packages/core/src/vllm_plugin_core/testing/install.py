"""Install real distributions into a folder for ``PYTHONPATH`` (tests only).

A test that needs a plugin installed next to vLLM (a broken one, a counting
one) installs it here instead of into the test environment, then points a
child process's ``PYTHONPATH`` at the folder: vLLM's loaders see a real
distribution with its entry points, and nothing leaks into other tests.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["install_into"]


def install_into(target: Path, *projects: Path) -> Path:
    """``pip install --no-deps --target target projects...`` (uv when available)."""
    uv = shutil.which("uv")
    if uv:
        cmd = [uv, "pip", "install", "--python", sys.executable, "--no-deps", "--no-sources",
               "--target", str(target)]
    else:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
    subprocess.run([*cmd, *map(str, projects)], check=True, capture_output=True, timeout=300)
    return target
