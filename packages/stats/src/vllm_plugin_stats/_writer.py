"""Background JSON Lines writer: one daemon thread owns the file.

Callers only ``put()`` dicts on a bounded queue (no I/O, no serialization on
their thread). The thread serializes, writes and flushes in batches and
rotates by size. Robustness, in order of what can go wrong:

* Queue full (slow or hung disk): ``request`` records are dropped first, once
  ``queue_max`` records wait; other records have a reserve of
  ``queue_max // 8`` (at least 16) more. Drops are counted
  (:meth:`JsonlWriter.take_dropped`, :attr:`JsonlWriter.dropped_total`).
* Torn last line (a crash mid-write): on open, a file that does not end in a
  newline gets one, so the next record starts on a fresh line.
* ``OSError`` while opening or writing: retried with backoff
  (:attr:`JsonlWriter.retry_delays`); after the last retry fails, ONE warning
  naming the path and the errno text, and everything that follows is
  discarded (the logger stays out of vLLM's way).
* The file renamed or removed by someone else (logrotate): noticed before
  each batch (device and inode compared) and reopened at the path.
* Several processes given one path: each claims the path with an exclusive
  ``flock`` on the hidden ``.<name>.lock`` beside it (kept, never rotated); a process that finds it taken writes
  ``<stem>.pid<pid><suffix>`` instead (``stats.jsonl`` ->
  ``stats.pid4242.jsonl``), so each file has one writer and rotates alone.
* ``NaN``/``Infinity`` are written as ``null`` (they are not JSON).

One writer is shared by every logger of the process that targets the same
path (several engines with data parallelism write one file). Imports only the
standard library.
"""

from __future__ import annotations

import collections
import errno as _errno
import json
import logging
import math
import os
import stat
import threading
import time
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

# A child of vLLM's "vllm" logger, so the lines appear in vLLM's log output
# with vLLM's format (a top-level "vllm_plugin_stats" logger would have no
# handler for INFO lines).
logger = logging.getLogger("vllm.plugins.stats")

_STOP = object()
DEFAULT_QUEUE_MAX = 8192


class _Flush:
    __slots__ = ("event", "lost", "ok")

    def __init__(self, lost: int) -> None:
        self.event = threading.Event()
        self.lost = lost
        self.ok = False


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


def pid_path(path: str, pid: int, n: int = 0) -> str:
    """``stats.jsonl`` -> ``stats.pid<pid>.jsonl`` (``-<n>`` added for n > 0)."""
    base, ext = os.path.splitext(path)
    tag = f".pid{pid}" + (f"-{n}" if n else "")
    return f"{base}{tag}{ext}"


def lock_path(path: str) -> str:
    """The hidden lock file that claims ``path``: ``dir/.name.lock``."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.lock")


def _claim(path: str) -> tuple[str, int | None]:
    """The path this process writes and the fd holding its lock (or None).

    Non-regular targets (``/dev/stdout``, a FIFO) are not locked.
    """
    if fcntl is None:  # pragma: no cover
        return path, None
    try:
        if os.path.exists(path) and not os.path.isfile(path):
            return path, None
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
    except OSError:
        return path, None  # the writer reports the error when it opens the file
    pid = os.getpid()
    for cand in [path] + [pid_path(path, pid, n) for n in range(8)]:
        try:
            fd = os.open(lock_path(cand), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return cand, None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except OSError:  # file system without flock: write unlocked
            os.close(fd)
            return cand, None
        return cand, fd
    return pid_path(path, pid, 8), None  # pragma: no cover - nine live writers


def _describe(exc: OSError) -> str:
    if exc.errno is not None:
        text = exc.strerror or os.strerror(exc.errno)
        name = _errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{text} ({name})"
    return str(exc) or type(exc).__name__


def _finite(value: Any) -> Any:
    """``value`` with every NaN/Infinity float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(record: dict[str, Any]) -> str:
    """One compact JSON line (no trailing newline); NaN/Infinity become null."""
    try:
        return json.dumps(record, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(record), separators=(",", ":"), default=str, allow_nan=False)


class JsonlWriter:
    """Owns one output file; see the module docstring.

    ``queue_max=None`` leaves the queue unbounded (offline tools writing a
    known amount).
    """

    #: Seconds slept before each retry of a failed open/write; then it gives up.
    retry_delays: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

    def __init__(self, path: str, max_bytes: int = 0, keep: int = 5, *, start: bool = True,
                 queue_max: int | None = DEFAULT_QUEUE_MAX, claim: bool = True) -> None:
        self.requested_path = path
        self.path, self._lock_fd = _claim(path) if claim else (path, None)
        self.max_bytes = max_bytes
        self.keep = keep
        self.queue_max = queue_max
        self.reserve = max(16, (queue_max or 0) // 8)
        self.failed = False
        self.closed = False
        self.lines_written = 0
        self.dropped_total = 0
        self.queue_high_water = 0
        self._dropped_since = 0
        self._lost = 0
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None
        self._regular = True
        self._size = 0
        self._thread = threading.Thread(target=self._run, name="vllm-plugin-stats-writer", daemon=True)
        if start:
            self._thread.start()

    # -- caller side ---------------------------------------------------------

    def put(self, record: dict[str, Any], droppable: bool = False) -> bool:
        """Queue one record (no I/O here); False if it was dropped.

        ``droppable`` records (``request``) go first when the queue is full.
        """
        if self.failed or self.closed:
            return False
        with self._cond:
            n = len(self._items)
            if self.queue_max is not None:
                limit = self.queue_max if droppable else self.queue_max + self.reserve
                if n >= limit:
                    self.dropped_total += 1
                    self._dropped_since += 1
                    self._lost += 1
                    return False
            self._items.append(record)
            if n >= self.queue_high_water:
                self.queue_high_water = n + 1
            if n == 0:
                self._cond.notify()
        return True

    def take_dropped(self) -> int:
        """Records dropped since the previous call."""
        with self._cond:
            n, self._dropped_since = self._dropped_since, 0
        return n

    def pending(self) -> int:
        """Records waiting in the queue."""
        return len(self._items)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything queued so far is written and flushed.

        True only if every record put since the previous ``flush()`` reached
        the file: False after a drop, a failed write, or a timeout.
        """
        if self.closed or not self._thread.is_alive():
            return False
        with self._cond:
            marker = _Flush(self._lost)
            self._lost = 0
            self._items.append(marker)
            self._cond.notify()
        return marker.event.wait(timeout) and marker.ok

    def close(self, timeout: float | None = 30.0) -> None:
        """Drain the queue, close the file and stop the thread."""
        if self.closed:
            return
        self.closed = True
        with self._cond:
            self._items.append(_STOP)
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        elif not self._thread.is_alive():
            self._release_lock()

    # -- writer thread -------------------------------------------------------

    def _run(self) -> None:
        stop = False
        write_ok = True
        while not stop:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                items = list(self._items)
                self._items.clear()
            lines: list[str] = []
            for item in items:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Flush):
                    if lines:
                        write_ok = self._write_lines(lines) and write_ok
                        lines = []
                    item.ok = write_ok and item.lost == 0 and not self.failed
                    write_ok = True
                    item.event.set()
                elif self.failed:
                    continue
                else:
                    try:
                        lines.append(dumps(item) + "\n")
                    except (TypeError, ValueError) as exc:  # pragma: no cover - defensive
                        write_ok = False
                        logger.warning("vllm-plugin-stats: dropped a record that is not JSON: %s", exc)
            if lines:
                write_ok = self._write_lines(lines) and write_ok
        self._close_file()
        self._release_lock()

    def _open(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            try:
                os.makedirs(directory, exist_ok=True)
            except FileExistsError:
                pass  # a file in the way: os.open says "Not a directory"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            st = os.fstat(fd)
            self._regular = stat.S_ISREG(st.st_mode)
            self._id = (st.st_dev, st.st_ino)
            self._size = st.st_size if self._regular else 0
            if self._regular and self._size:
                with open(self.path, "rb") as fh:
                    fh.seek(self._size - 1)
                    torn = fh.read(1) != b"\n"
                if torn:
                    logger.info("vllm-plugin-stats: %s ended in a partial line (an earlier writer was cut off); "
                                "starting on a new line.", self.path)
                    self._write_all(fd, b"\n")
                    self._size += 1
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _moved(self) -> bool:
        """True when the path no longer names the open file (renamed, removed)."""
        if not self._regular:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._id

    @staticmethod
    def _write_all(fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def _write_lines(self, lines: list[str]) -> bool:
        """Write lines, rotating by size; retry on OSError. False if given up."""
        if not self._retrying(self._ensure_open):
            return False
        pending: list[bytes] = []
        plen = 0
        for line in lines:
            data = line.encode("utf-8")
            before = self._size + plen
            if self.max_bytes and self._regular and before and before + len(data) > self.max_bytes:
                if pending and not self._retrying(self._write_chunk, b"".join(pending)):
                    return False
                pending, plen = [], 0
                if not self._retrying(self._rotate):
                    return False
            pending.append(data)
            plen += len(data)
        if pending and not self._retrying(self._write_chunk, b"".join(pending)):
            return False
        self.lines_written += len(lines)
        return True

    def _retrying(self, fn: Any, *args: Any) -> bool:
        """``fn(state, *args)``, retried after each OSError; False once given up."""
        state: dict[str, Any] = {"pos": 0}
        for delay in (*self.retry_delays, None):
            try:
                fn(state, *args)
                return True
            except OSError as exc:
                self._close_file()
                if delay is None:
                    self._fail(exc)
                    return False
                time.sleep(delay)
        return False  # pragma: no cover

    def _ensure_open(self, state: dict[str, Any]) -> None:
        if self._fd is not None and self._moved():
            self._close_file()
        if self._fd is None:
            self._open()

    def _write_chunk(self, state: dict[str, Any], data: bytes) -> None:
        if self._fd is not None and self._moved():
            self._close_file()
            # Continue at the start of the line a partial write was in: the
            # moved file keeps a torn copy, the new file the whole line.
            state["pos"] = data.rfind(b"\n", 0, state["pos"]) + 1
        if self._fd is None:
            self._open()
        view = memoryview(data)[state["pos"]:]
        while view:
            n = os.write(self._fd, view)  # type: ignore[arg-type]
            state["pos"] += n
            self._size += n
            view = view[n:]

    def _rotate(self, state: dict[str, Any]) -> None:
        self._close_file()
        if self.keep > 0:
            for i in range(self.keep - 1, 0, -1):
                src = f"{self.path}.{i}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i + 1}")
            if os.path.exists(self.path):
                os.replace(self.path, f"{self.path}.1")
        elif os.path.exists(self.path):
            os.truncate(self.path, 0)
        self._open()

    def _fail(self, exc: OSError) -> None:
        self.failed = True
        logger.warning(
            "vllm-plugin-stats: cannot write %s: %s (%d attempts); JSON Lines stats are disabled for this "
            "process (check VLLM_PLUGIN_STATS_PATH).",
            self.path,
            _describe(exc),
            len(self.retry_delays) + 1,
        )
        with self._cond:
            self._items = collections.deque(i for i in self._items if not isinstance(i, dict))

    def _close_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:  # pragma: no cover - close of a plain fd
                pass

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)


# -- process-wide registry -----------------------------------------------------

_LOCK = threading.Lock()
_WRITERS: dict[str, tuple[JsonlWriter, int]] = {}
_RESOLVED: dict[str, str] = {}


def acquire(setting: str, max_bytes: int, keep: int, queue_max: int = DEFAULT_QUEUE_MAX) -> JsonlWriter:
    """The shared writer for ``setting``, started on first use (refcounted)."""
    with _LOCK:
        path = _RESOLVED.get(setting)
        if path is None:
            path = _RESOLVED[setting] = resolve_path(setting)
        entry = _WRITERS.get(path)
        if entry is None or entry[0].closed:
            # Directory mode names a new file per process start: nothing to claim.
            own_file = path != os.path.abspath(os.path.expanduser(setting))
            writer = JsonlWriter(path, max_bytes, keep, queue_max=queue_max, claim=not own_file)
            _WRITERS[path] = (writer, 1)
            return writer
        writer, refs = entry
        _WRITERS[path] = (writer, refs + 1)
        return writer


def release(writer: JsonlWriter) -> None:
    """Drop one reference; the last one drains and closes the writer."""
    with _LOCK:
        entry = _WRITERS.get(writer.requested_path)
        if entry is None or entry[0] is not writer:
            last = True
        else:
            refs = entry[1] - 1
            last = refs <= 0
            if last:
                del _WRITERS[writer.requested_path]
            else:
                _WRITERS[writer.requested_path] = (writer, refs)
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
