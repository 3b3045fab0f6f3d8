"""vllm-plugin-models: architectures vLLM lacks (NanoChat) and architecture aliases."""

__version__ = "0.1.0"
