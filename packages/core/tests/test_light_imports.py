"""Core must import without vLLM, and its entry-point modules import nothing heavy."""

from __future__ import annotations

import subprocess
import sys

CHECK = r"""
import sys, time, importlib
t = time.perf_counter()
for m in ["vllm_plugin_core", "vllm_plugin_core._entry", "vllm_plugin_core.settings",
          "vllm_plugin_core.guard", "vllm_plugin_core.version", "vllm_plugin_core.patches",
          "vllm_plugin_core.compat", "vllm_plugin_core.cli", "vllm_plugin_core.contracts",
          "vllm_plugin_core.testing.models",
          "vllm_plugin_core.testing.server"]:
    importlib.import_module(m)
heavy = sorted(m for m in ("vllm", "torch", "transformers", "numpy") if m in sys.modules)
print(heavy, round((time.perf_counter() - t) * 1000, 1))
"""

BLOCK_VLLM = r"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm' (blocked by test)")
sys.meta_path.insert(0, Block())
import vllm_plugin_core.version as v
v.vllm_distribution.cache_clear()
v.vllm_distribution = lambda: None  # as on a machine without any vLLM distribution
from vllm_plugin_core import compat
try:
    compat.input_processor_class()
except v.VllmNotInstalledError as e:
    print("CLEAR:", e)
"""


def test_core_imports_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    heavy, _ms = out.stdout.rsplit("]", 1)
    assert heavy + "]" == "[]", f"core imported heavy modules: {heavy}]"


def test_vllm_only_function_without_vllm_says_what_is_missing():
    out = subprocess.run([sys.executable, "-c", BLOCK_VLLM], capture_output=True, text=True, check=True)
    assert "CLEAR: request validation needs vLLM" in out.stdout
