"""Background JSON Lines writer: one daemon thread owns the file.

Callers only ``put()`` dicts on a queue (no I/O, no serialization on their
thread). The thread serializes, writes and flushes in batches, rotates by
size, and on the first ``OSError`` logs ONE warning naming the path and the
errno text, then discards everything that follows (the logger stays out of
vLLM's way). ``close()`` drains the queue before closing the file.

One writer is shared by every logger of the process that targets the same
path (several engines with data parallelism write one file). Imports only the
standard library.
"""

from __future__ import annotations

import errno as _errno
import json
import logging
import os
import queue
import threading
import time
from typing import Any

# A child of vLLM's "vllm" logger, so the lines appear in vLLM's log output
# with vLLM's format (a top-level "vllm_plugin_stats" logger would have no
# handler for INFO lines).
logger = logging.getLogger("vllm.plugins.stats")

_STOP = object()


class _Flush:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


def resolve_path(setting: str, now: float | None = None, pid: int | None = None) -> str:
    """The file to write for ``VLLM_PLUGIN_STATS_PATH=setting``.

    An existing directory, or a value ending in a path separator, gets a new
    file ``vllm-stats-<UTC timestamp>-<pid>.jsonl`` (the directory is created
    if missing); anything else is the file itself.
    """
    expanded = os.path.expanduser(setting)
    is_dir = expanded.endswith(("/", os.sep)) or os.path.isdir(expanded)
    if not is_dir:
        return os.path.abspath(expanded)
    now = time.time() if now is None else now
    pid = os.getpid() if pid is None else pid
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return os.path.join(os.path.abspath(expanded), f"vllm-stats-{stamp}-{pid}.jsonl")


def _describe(exc: OSError) -> str:
    if exc.errno is not None:
        text = exc.strerror or os.strerror(exc.errno)
        name = _errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{text} ({name})"
    return str(exc) or type(exc).__name__


class JsonlWriter:
    """Owns one output file; see the module docstring."""

    def __init__(self, path: str, max_bytes: int = 0, keep: int = 5, *, start: bool = True) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.failed = False
        self.closed = False
        self.lines_written = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._file: Any = None
        self._size = 0
        self._thread = threading.Thread(target=self._run, name="vllm-plugin-stats-writer", daemon=True)
        if start:
            self._thread.start()

    # -- caller side ---------------------------------------------------------

    def put(self, record: dict[str, Any]) -> None:
        """Queue one record (no I/O here)."""
        if not self.failed and not self.closed:
            self._queue.put(record)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything queued so far is written and flushed."""
        if self.closed or not self._thread.is_alive():
            return False
        marker = _Flush()
        self._queue.put(marker)
        return marker.event.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Drain the queue, close the file and stop the thread."""
        if self.closed:
            return
        self.closed = True
        self._queue.put(_STOP)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- writer thread -------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[str] = []
            markers: list[_Flush] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stop = True
                    break
                if isinstance(item, _Flush):
                    markers.append(item)
                elif not self.failed:
                    try:
                        batch.append(json.dumps(item, separators=(",", ":"), default=str) + "\n")
                    except (TypeError, ValueError) as exc:  # pragma: no cover - defensive
                        logger.warning("vllm-plugin-stats: dropped a record that is not JSON: %s", exc)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch and not self.failed:
                self._write_batch(batch)
            for marker in markers:
                marker.event.set()
        self._close_file()

    def _open(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._size = self._file.tell()

    def _write_batch(self, lines: list[str]) -> None:
        try:
            if self._file is None:
                self._open()
            for line in lines:
                size = len(line.encode("utf-8")) if not line.isascii() else len(line)
                if self.max_bytes and self._size and self._size + size > self.max_bytes:
                    self._rotate()
                self._file.write(line)
                self._size += size
            self._file.flush()
            self.lines_written += len(lines)
        except OSError as exc:
            self._fail(exc)

    def _rotate(self) -> None:
        self._file.flush()
        self._file.close()
        self._file = None
        if self.keep > 0:
            for i in range(self.keep - 1, 0, -1):
                src = f"{self.path}.{i}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
            self._file = open(self.path, "a", encoding="utf-8")
        else:
            self._file = open(self.path, "w", encoding="utf-8")
        self._size = 0

    def _fail(self, exc: OSError) -> None:
        self.failed = True
        logger.warning(
            "vllm-plugin-stats: cannot write %s: %s; JSON Lines stats are disabled for this process "
            "(check VLLM_PLUGIN_STATS_PATH).",
            self.path,
            _describe(exc),
        )
        self._close_file()

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError as exc:
                if not self.failed:
                    self._fail(exc)


# -- process-wide registry -----------------------------------------------------

_LOCK = threading.Lock()
_WRITERS: dict[str, tuple[JsonlWriter, int]] = {}
_RESOLVED: dict[str, str] = {}


def acquire(setting: str, max_bytes: int, keep: int) -> JsonlWriter:
    """The shared writer for ``setting``, started on first use (refcounted)."""
    with _LOCK:
        path = _RESOLVED.get(setting)
        if path is None:
            path = _RESOLVED[setting] = resolve_path(setting)
        entry = _WRITERS.get(path)
        if entry is None or entry[0].closed:
            writer = JsonlWriter(path, max_bytes, keep)
            _WRITERS[path] = (writer, 1)
            return writer
        writer, refs = entry
        _WRITERS[path] = (writer, refs + 1)
        return writer


def release(writer: JsonlWriter) -> None:
    """Drop one reference; the last one drains and closes the writer."""
    with _LOCK:
        entry = _WRITERS.get(writer.path)
        if entry is None or entry[0] is not writer:
            last = True
        else:
            refs = entry[1] - 1
            last = refs <= 0
            if last:
                del _WRITERS[writer.path]
            else:
                _WRITERS[writer.path] = (writer, refs)
    if last:
        writer.close()


def close_all() -> None:
    """Drain and close every writer (atexit, after the loggers closed)."""
    with _LOCK:
        writers = [w for w, _ in _WRITERS.values()]
        _WRITERS.clear()
    for writer in writers:
        writer.close()


def _reset_for_tests() -> None:
    close_all()
    with _LOCK:
        _RESOLVED.clear()
