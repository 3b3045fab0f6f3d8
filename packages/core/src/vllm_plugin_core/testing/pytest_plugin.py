"""pytest fixtures for vLLM plugin authors (registered through ``pytest11``).

Fixtures (all offline, no hub):

* ``tiny_causal_lm`` (session): path of a cached 2-layer Llama with a trained
  byte-level BPE tokenizer.
* ``tiny_embedding_model`` (session): a cached tiny BERT encoder.
* ``tiny_lora_adapter`` (session): a LoRA adapter for ``tiny_causal_lm``.
* ``vllm_llm_factory`` (module): ``factory(model, **llm_kwargs)`` builds an
  offline ``LLM`` in-process once per module (cached per arguments).
* ``vllm_server_factory`` (module): ``factory(model, args=(), env=None)``
  starts ``vllm serve`` on a free loopback port; stopped after the module,
  its log printed when start-up fails.
* ``assert_entry_point_discovered``: ``f(group, name)`` asserts vLLM's own
  loader finds and loads that entry point.

Importing this module imports nothing heavy; vLLM and torch are imported
when a fixture that needs them runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vllm_plugin_core.testing import models
from vllm_plugin_core.testing.platform import engine_env, needs_torch_native
from vllm_plugin_core.testing.server import VllmServer

#: Keyword arguments that make a tiny model start on a CPU build of vLLM.
CPU_LLM_KWARGS: dict[str, Any] = {
    "enforce_eager": True,
    "dtype": "float32",
    "gpu_memory_utilization": 0.2,
    # An explicit KV-cache size: the CPU backend otherwise sizes it from this
    # process's RSS, which grows over a test session and can leave nothing.
    "kv_cache_memory_bytes": 256 * 1024 * 1024,
    "max_model_len": 512,
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "engine: starts a real vLLM engine or server (slow)")
    if needs_torch_native():
        # before anything resolves vLLM's current platform in this process
        try:
            os.environ.update(engine_env())
        except RuntimeError as exc:  # torch-native not installed: engine tests say so
            config.stash[_NO_PLATFORM] = str(exc)


_NO_PLATFORM = pytest.StashKey[str]()


def pytest_report_header(config: pytest.Config) -> str | None:
    if not needs_torch_native():
        return None
    return ("vLLM build without CPU kernels: engines run on the torch-native platform"
            if _NO_PLATFORM not in config.stash else config.stash[_NO_PLATFORM])


@pytest.fixture(scope="session")
def tiny_causal_lm() -> Path:
    return models.build_causal_lm()


@pytest.fixture(scope="session")
def tiny_embedding_model() -> Path:
    return models.build_embedding_model()


@pytest.fixture(scope="session")
def tiny_lora_adapter(tiny_causal_lm: Path) -> Path:
    return models.build_lora_adapter(tiny_causal_lm)


def make_llm(model: str | os.PathLike[str], **kwargs: Any) -> Any:
    """An offline ``LLM`` for a tiny model, engine in this process (on the
    torch-native platform where the vLLM build has no CPU kernels)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    for name, value in engine_env().items():  # torch-native on builds without CPU kernels
        os.environ.setdefault(name, value)
    from vllm import LLM

    args = {**CPU_LLM_KWARGS, "distributed_executor_backend": "uni", **kwargs}
    return LLM(model=str(model), **args)


@pytest.fixture(scope="module")
def vllm_llm_factory() -> Iterator[Callable[..., Any]]:
    made: dict[str, Any] = {}

    def factory(model: str | os.PathLike[str], **kwargs: Any) -> Any:
        key = repr((str(model), sorted(kwargs.items())))
        if key not in made:
            made[key] = make_llm(model, **kwargs)
        return made[key]

    yield factory
    for llm in made.values():
        shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:
                pass
    made.clear()
    import gc

    gc.collect()


@pytest.fixture(scope="module")
def vllm_server_factory() -> Iterator[Callable[..., VllmServer]]:
    servers: list[VllmServer] = []

    def factory(model: str | os.PathLike[str], args: tuple[str, ...] | list[str] = (),
                env: dict[str, str] | None = None, **kwargs: Any) -> VllmServer:
        server = VllmServer(model, args, env, **kwargs)
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.stop()


def discovered_by_vllm(group: str, name: str) -> Any:
    """Load ``name`` from ``group`` through vLLM's own plugin loader."""
    if group == "vllm.logits_processors":  # every loader this vLLM has must return it
        from importlib.metadata import entry_points

        from vllm_plugin_core import compat

        wanted = {ep.value.split(":")[-1] for ep in entry_points(group=group) if ep.name == name}
        found = None
        for load in compat.logits_processor_plugin_loaders():
            hits = [cls for cls in load() if getattr(cls, "__vllm_plugin_name__", None) == name
                    or cls.__name__ == name or cls.__name__ in wanted]
            if not hits:
                raise AssertionError(f"vLLM's logits-processor loader {load.__qualname__} did not return {name!r}")
            found = hits[0]
        if found is None:
            raise AssertionError("this vLLM has no logits-processor plugin loader")
        return found
    from vllm.plugins import load_plugins_by_group

    loaded = load_plugins_by_group(group)
    if name not in loaded:
        raise AssertionError(
            f"vLLM's loader did not find entry point {name!r} in {group}; found {sorted(loaded)}"
        )
    return loaded[name]


@pytest.fixture
def assert_entry_point_discovered() -> Callable[[str, str], Any]:
    return discovered_by_vllm
