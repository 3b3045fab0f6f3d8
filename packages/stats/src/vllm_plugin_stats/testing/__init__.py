"""Test helpers of vllm-plugin-stats (a real OTLP receiver)."""
