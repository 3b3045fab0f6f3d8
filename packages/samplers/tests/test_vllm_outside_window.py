"""On a vLLM whose logits-processor interfaces this package does not know,
importing a processor fails with one message that names the package, the
running vLLM, the supported range and the fix; vLLM's loader shows it as the
cause of its own fatal error. A throwaway fake ``vllm`` (a package and its
distribution metadata, first on ``PYTHONPATH``) stands in for that release."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vllm_plugin_core.version import SUPPORTED_VLLM

FAKE_VERSION = "0.99.0"


def _fake_vllm(root: Path) -> Path:
    pkg = root / "vllm"
    (pkg / "v1").mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"__version__ = {FAKE_VERSION!r}\n")
    (pkg / "v1" / "__init__.py").write_text("")
    dist = root / f"vllm-{FAKE_VERSION}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {FAKE_VERSION}\n")
    (dist / "top_level.txt").write_text("vllm\n")
    return root


def test_unknown_vllm_gets_a_message_naming_package_version_range_and_fix(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_fake_vllm(tmp_path)),
                                                                       os.environ.get("PYTHONPATH")]))}
    code = "import vllm, vllm_plugin_samplers.processors"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: vllm-plugin-samplers cannot load"), r.stderr[-2000:]
    assert f"vllm {FAKE_VERSION}" in last and f"supported vLLM: {SUPPORTED_VLLM}" in last
    assert "Fix: install a supported vLLM" in last and "uninstall vllm-plugin-samplers" in last
