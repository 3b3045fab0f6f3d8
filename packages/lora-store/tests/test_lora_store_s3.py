"""S3 store against a real S3-compatible server (moto, server mode) on loopback."""

from __future__ import annotations

import logging
import os

import pytest
from lora_store_helpers import ADAPTER_FILES, cached_names, make_resolver, run

from vllm_plugin_core.testing.s3 import S3Server, moto_available
from vllm_plugin_core.testing.server import free_port
from vllm_plugin_lora_store.stores import S3Store

if not moto_available():
    pytest.skip("boto3 and moto are needed: pip install boto3 'moto[server]'", allow_module_level=True)


@pytest.fixture(scope="module")
def s3_endpoint():
    server = S3Server().start()
    env = server.env
    old = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    os.environ.update(env)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def bucket(s3_endpoint, adapter_src, request):
    import boto3

    client = boto3.client("s3")
    name = f"adapters-{request.node.name.lower().replace('_', '-')}"[:60]
    client.create_bucket(Bucket=name)
    for f in ADAPTER_FILES:
        client.upload_file(str(adapter_src / f), name, f"team/loras/good/{f}")
    client.put_object(Bucket=name, Key="team/loras/good/.gitattributes", Body=b"*.safetensors lfs\n")
    client.put_object(Bucket=name, Key="team/loras/good/checkpoint-1/ignored.bin", Body=b"x")
    return client, name


def test_s3_happy_path(tmp_path, bucket, base_model, adapter_src):
    _client, name = bucket
    cache = tmp_path / "cache"
    r = make_resolver(S3Store(f"s3://{name}/team/loras"), cache)
    req = run(r.resolve_lora(str(base_model), "good"))
    assert req is not None
    assert sorted(os.listdir(req.lora_path)) == list(ADAPTER_FILES)
    assert (cache / "adapters" / "good" / "adapter_model.safetensors").read_bytes() == (
        adapter_src / "adapter_model.safetensors"
    ).read_bytes()
    assert run(r.resolve_lora(str(base_model), "good")).lora_path == req.lora_path
    assert r.downloads == 1


def test_s3_not_found_and_refusal(tmp_path, bucket, base_model, plugin_log):
    client, name = bucket
    client.put_object(
        Bucket=name, Key="team/loras/ia3/adapter_config.json",
        Body=b'{"peft_type": "IA3", "r": 8, "target_modules": ["q_proj"]}',
    )
    client.put_object(Bucket=name, Key="team/loras/ia3/adapter_model.safetensors", Body=b"\0" * 16)
    r = make_resolver(S3Store(f"s3://{name}/team/loras"), tmp_path / "cache")
    assert run(r.resolve_lora(str(base_model), "nothing-here")) is None
    assert run(r.resolve_lora(str(base_model), "ia3")) is None
    assert cached_names(tmp_path / "cache") == []
    assert any("refused (peft-type)" in m for m in plugin_log.messages(logging.WARNING))


def test_s3_bucket_without_prefix(tmp_path, s3_endpoint, adapter_src, base_model):
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="flat")
    for f in ADAPTER_FILES:
        client.upload_file(str(adapter_src / f), "flat", f"good/{f}")
    r = make_resolver(S3Store("s3://flat"), tmp_path / "cache")
    assert run(r.resolve_lora(str(base_model), "good")) is not None


def test_s3_unreachable_logs_once_and_returns_none(tmp_path, plugin_log, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    r = make_resolver(S3Store("s3://nowhere/x"), tmp_path / "cache")
    assert run(r.resolve_lora("base", "good")) is None
    assert run(r.resolve_lora("base", "good")) is None
    warnings = plugin_log.messages(logging.WARNING)
    assert len(warnings) == 1 and "could not be fetched" in warnings[0]
