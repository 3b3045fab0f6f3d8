import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def digits_tokenizer(monkeypatch):
    """The DRY resolver of a 16-token vocabulary whose token i reads str(i)
    (no breaker among them), for processors built without a model."""
    from vllm_plugin_samplers.breakers import Resolver

    monkeypatch.setattr("vllm_plugin_samplers.processors.make_resolver",
                        lambda cfg: Resolver([str(i) for i in range(16)]))
