"""vllm-plugin-samplers: no-repeat n-gram, DRY and XTC as vLLM logits processors."""

__version__ = "0.1.0"
