import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def _has_v1() -> bool:
    from vllm_plugin_core import compat

    return compat.v1_logits_interface() is not None


#: V1 model-runner tests: vLLM 0.34 removed that runner (they run on 0.31 to 0.33).
needs_v1 = pytest.mark.skipif(not _has_v1(), reason="vLLM 0.34+ has no V1 model runner; "
                              "this V1 test runs in the sessions of vLLM 0.31 to 0.33")


@pytest.fixture
def digits_tokenizer(monkeypatch):
    """The DRY resolver of a 16-token vocabulary whose token i reads str(i)
    (no breaker among them), for processors built without a model."""
    from vllm_plugin_samplers.breakers import Resolver

    monkeypatch.setattr("vllm_plugin_samplers.processors.make_resolver",
                        lambda cfg: Resolver([str(i) for i in range(16)]))
