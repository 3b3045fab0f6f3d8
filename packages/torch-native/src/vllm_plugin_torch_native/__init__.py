"""vllm-plugin-torch-native: an out-of-tree vLLM platform in plain PyTorch.

Activate with ``VLLM_PLUGIN_TORCH_NATIVE=1``. Importing this package imports
neither vLLM nor torch; the platform lives in :mod:`.platform`, the attention
backend in :mod:`.attention` and the custom ops in :mod:`.ops`.
"""

__version__ = "0.1.0"

#: Dotted path of the platform class (what the detection function returns).
PLATFORM_PATH = "vllm_plugin_torch_native.platform.TorchNativePlatform"
#: Dotted path of the attention backend class.
BACKEND_PATH = "vllm_plugin_torch_native.attention.TorchNativeAttentionBackend"
#: Name of the attention backend in vLLM's registry (0.32+; ``CUSTOM`` before).
BACKEND_NAME = "TORCH_NATIVE"

__all__ = ["BACKEND_NAME", "BACKEND_PATH", "PLATFORM_PATH", "__version__"]
