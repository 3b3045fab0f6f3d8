"""Core inside a real ``vllm serve``: its general plugin runs in every vLLM
process, once each, and keeps vLLM quiet about declared plugin settings."""

from __future__ import annotations

import re

import pytest

#: Set on the shared server by tests/conftest.py; declared by no package.
UNDECLARED = "VLLM_PLUGIN_NOBODY_DECLARES_THIS"

pytestmark = pytest.mark.engine


def test_guarded_registration_runs_once_in_each_vllm_process(shared_server, registrations_file):
    """A real installed plugin wrapped in core's guard (``vpc-test-healthy``)
    registers in the front end and the engine core (and workers where vLLM
    starts them), exactly once in each, although vLLM calls it repeatedly."""
    pids = registrations_file.read_text().split()
    assert len(set(pids)) >= 2, f"front end and engine core each load general plugins: {pids}"
    assert len(pids) == len(set(pids)), f"the body ran more than once in a process: {pids}"
    # Where vLLM has configured logging by then, core's own line shows too, once per process.
    core = re.findall(r"vllm-plugin-core registered \(pid (\d+)\)", shared_server.log_text())
    assert core and len(core) == len(set(core))


def test_declared_settings_raise_no_unknown_variable_warning(shared_server):
    log = shared_server.log_text()
    found = re.findall(r"Unknown vLLM environment variable detected: (\S+)", log)
    unknown = {name for name in found if name.startswith("VLLM_PLUGIN")}
    assert UNDECLARED in unknown, "control: vLLM does warn for a variable nobody declares"
    assert unknown == {UNDECLARED}, f"declared plugin settings were reported: {unknown - {UNDECLARED}}"


def test_server_keeps_idle_connections_longer_than_the_client_pool(shared_server):
    """The shared server holds an idle keep-alive connection past the openai
    client's pool expiry, so the client, never the server, closes it. Where
    both are 5 s, a request sent at that moment gets ECONNRESET."""
    import http.client
    import time

    import openai._constants

    expiry = openai._constants.DEFAULT_CONNECTION_LIMITS.keepalive_expiry
    conn = http.client.HTTPConnection(shared_server.host, shared_server.port, timeout=30)
    try:
        conn.request("GET", "/health")
        first = conn.getresponse()
        first.read()
        assert first.status == 200
        sock = conn.sock
        time.sleep(expiry + 1.0)
        conn.request("GET", "/health")  # the same socket: no reconnect
        second = conn.getresponse()
        second.read()
        assert second.status == 200 and conn.sock is sock
    finally:
        conn.close()
