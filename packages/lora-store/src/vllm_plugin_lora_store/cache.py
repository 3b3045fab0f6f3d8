"""The local adapter cache: atomic installs, LRU eviction under a size bound,
safe when several processes share the directory.

Layout under the cache directory::

    .lock                          the cache lock (flock): installs, reservations, evictions
    adapters/<name>/               complete, validated adapters (what vLLM is pointed at)
    leases/<name>                  a shared flock on it per process using <name>
    tmp/<name>.<pid>.<rand>/       downloads in progress (and evictions being deleted)
    tmp/<name>.<pid>.<rand>.lock   held (flock) by the downloading process; holds the
                                   bytes it reserved against the bound

A download is written to ``tmp/`` and renamed into ``adapters/`` only when it
is complete and validated, so a crash or kill leaves at most a temp folder,
which the next process to open the cache deletes.

Several processes. ``--api-server-count > 1``, or pods sharing a volume,
share one directory. Every decision on the bound (reserve room for a download,
install, evict) is taken under the cache lock, from what is on disk: the
adapters there, plus the bytes reserved by every live download. Liveness is
never a pid (meaningless across PID namespaces): it is a lock the kernel
drops when its process dies. A process using an adapter holds a shared lock
on ``leases/<name>``; an adapter is evicted only when the evicting process can
take that lock exclusively, i.e. when no process uses it.

In use. vLLM gives a resolver no "unloaded" callback, calls it only once per
adapter name (it then keeps the ``LoRARequest``), and its workers may re-read
``lora_path`` at any time. So this process holds its lease for
``in_use_seconds`` after the last resolve (0: for the life of the process, the
default and the only always-safe setting); an expired lease is dropped at the
next reservation this process makes. Pinned names are never evicted. When
everything cached is in use and a new adapter does not fit, the new adapter is
refused (``cache-full``) before anything is downloaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vllm_plugin_lora_store.validate import AdapterRefused, AdapterSummary

__all__ = ["AdapterCache", "Entry"]

logger = logging.getLogger("vllm.plugins.lora_store")

STALE_TEMP_SECONDS = 24 * 3600
_TOUCH_EVERY = 60.0  # seconds between LRU-time updates of a lease file


@dataclass
class Entry:
    name: str
    path: str
    size: int
    summary: AdapterSummary | None = None  # None: found on disk, not yet re-validated
    last_resolved: float | None = None  # monotonic; None: not resolved by this process
    lease: int | None = None  # fd holding a shared lock on leases/<name>
    touched: float = float("-inf")


def _dir_size(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def _try_lock(path: str, mode: int, create: bool = True) -> int | None:
    """Open ``path`` and take ``mode`` without waiting: the fd, or None if held
    (or, with ``create=False``, missing)."""
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class AdapterCache:
    def __init__(
        self,
        root: str,
        max_bytes: int,
        *,
        in_use_seconds: float = 0.0,
        pinned: Iterable[str] = (),
    ) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.adapters_dir = os.path.join(self.root, "adapters")
        self.leases_dir = os.path.join(self.root, "leases")
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.max_bytes = max_bytes
        self.in_use_seconds = in_use_seconds
        self.pinned = frozenset(pinned)
        self._lock = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self._temps: dict[str, int] = {}  # temp folder -> fd of its held .lock
        self._opened = False
        self.evictions = 0

    # --- the cache lock (threads of this process, then other processes) ---

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                if self._lock_fd is None:
                    self._lock_fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # --- opening and closing ---

    def open(self) -> None:
        """Create the folders, delete stale temp folders, index what is cached."""
        with self._lock:
            if self._opened:
                return
            for d in (self.adapters_dir, self.leases_dir, self.tmp_dir):
                os.makedirs(d, exist_ok=True)
            with self.locked():
                self.clean_stale_temps()
                found = []
                with os.scandir(self.adapters_dir) as it:
                    for d in it:
                        if d.is_dir(follow_symlinks=False):
                            found.append((d.stat(follow_symlinks=False).st_mtime, d.name, d.path))
            for _, name, path in sorted(found):
                self._entries[name] = Entry(name, path, _dir_size(path))
            self._opened = True
            if found:
                logger.info("LoRA cache %s: %d adapter(s), %d bytes", self.root, len(found), self.total_bytes())

    def close(self) -> None:
        """Drop this process's leases and reservations (what its exit does)."""
        with self._lock:
            for entry in self._entries.values():
                self._release(entry)
            for fd in self._temps.values():
                os.close(fd)
            self._temps.clear()

    def clean_stale_temps(self) -> int:
        """Delete temp folders whose process is gone (their lock is free), or older than a day."""
        removed = 0
        now = time.time()
        try:
            entries = list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            return 0
        for d in entries:
            if d.name.endswith(".lock"):
                continue
            lock = d.path + ".lock"
            if d.path in self._temps:
                continue
            try:
                old = now - d.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS
            except OSError:
                continue
            fd = _try_lock(lock, fcntl.LOCK_EX, create=False)
            if fd is None and os.path.exists(lock) and not old:
                continue  # a live download
            shutil.rmtree(d.path, ignore_errors=True) if d.is_dir(follow_symlinks=False) else _unlink(d.path)
            _unlink(lock)
            if fd is not None:
                os.close(fd)
            removed += 1
        for d in os.scandir(self.tmp_dir):  # locks whose folder is gone
            if d.name.endswith(".lock") and not os.path.lexists(d.path[: -len(".lock")]):
                fd = _try_lock(d.path, fcntl.LOCK_EX, create=False)
                if fd is not None:
                    _unlink(d.path)
                    os.close(fd)
        if removed:
            logger.info("LoRA cache %s: removed %d unfinished download(s)", self.root, removed)
        return removed

    # --- queries (fast: called on the event loop) ---

    def get(self, name: str) -> Entry | None:
        with self._lock:
            return self._entries.get(name)

    def touch(self, name: str) -> bool:
        """Mark ``name`` resolved now: most recently used, and in use (leased).
        Never waits; False when the lease cannot be taken now (an eviction
        holds it): then call :meth:`acquire` from a worker thread."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                return False
            now = time.monotonic()
            if entry.lease is None:
                entry.lease = _try_lock(os.path.join(self.leases_dir, name), fcntl.LOCK_SH)
                if entry.lease is None:
                    return False
                entry.touched = float("-inf")
            entry.last_resolved = now
            self._entries.move_to_end(name)
            if now - entry.touched > _TOUCH_EVERY:  # the LRU time other processes see
                entry.touched = now
                with contextlib.suppress(OSError):
                    os.utime(entry.lease)
            return True

    def acquire(self, name: str) -> bool:
        """Blocking: lease ``name`` if it is installed (False: it is not, e.g.
        evicted by another process). Take it before validating a cached copy."""
        with self.locked():
            entry = self._entries.get(name)
            if entry is None or not os.path.isdir(entry.path):
                return False
            return self.touch(name)

    def total_bytes(self) -> int:
        """Bytes of the adapters on disk plus those reserved by live downloads (all processes)."""
        with self.locked():
            return sum(size for _, _, size in self._on_disk()) + self._reserved()

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def in_use(self, entry: Entry, now: float | None = None) -> bool:
        """In use by this process (other processes: see their leases)."""
        if entry.name in self.pinned:
            return True
        if entry.last_resolved is None:
            return False
        if self.in_use_seconds <= 0:
            return True
        now = time.monotonic() if now is None else now
        return now - entry.last_resolved < self.in_use_seconds

    @staticmethod
    def _release(entry: Entry) -> None:
        if entry.lease is not None:
            os.close(entry.lease)
            entry.lease = None

    # --- changes (in worker threads) ---

    def new_temp(self, name: str, reserve: int = 0) -> str:
        """A temp folder for a download, reserving ``reserve`` bytes against the
        bound until it is installed or discarded (``cache-full`` if no room)."""
        with self.locked():
            if reserve:
                self._make_room(name, reserve)
            path = os.path.join(self.tmp_dir, f"{name}.{os.getpid()}.{uuid.uuid4().hex[:12]}")
            fd = _try_lock(path + ".lock", fcntl.LOCK_EX)
            if fd is None:
                raise OSError(f"cannot lock {path}.lock")
            os.write(fd, str(reserve).encode())
            os.makedirs(path)
            self._temps[path] = fd
            return path

    def set_summary(self, name: str, summary: AdapterSummary) -> None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None:
                entry.summary = summary
                entry.size = summary.size

    def remove(self, name: str) -> None:
        """Delete a broken cached copy (whoever leases it: it is unusable)."""
        with self.locked():
            entry = self._entries.pop(name, None)
            if entry is not None:
                self._release(entry)
                self._delete(entry.path, name)

    def _delete(self, path: str, name: str) -> None:
        # rename first, so that a crash mid-delete leaves only a temp folder
        grave = os.path.join(self.tmp_dir, f"evicted-{name}.{os.getpid()}.{uuid.uuid4().hex[:12]}")
        try:
            os.rename(path, grave)
        except OSError:
            grave = path
        shutil.rmtree(grave, ignore_errors=True)

    def _on_disk(self) -> list[tuple[float, str, int]]:
        """(LRU time, name, bytes) of every installed adapter, least recently used first."""
        out = []
        try:
            it = list(os.scandir(self.adapters_dir))
        except FileNotFoundError:
            return []
        for d in it:
            if not d.is_dir(follow_symlinks=False):
                continue
            try:
                t = d.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            with contextlib.suppress(OSError):
                t = max(t, os.stat(os.path.join(self.leases_dir, d.name)).st_mtime)
            entry = self._entries.get(d.name)
            size = entry.size if entry is not None and entry.path == d.path else _dir_size(d.path)
            out.append((t, d.name, size))
        out.sort()
        return out

    def _reserved(self) -> int:
        total = 0
        try:
            it = list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            return 0
        for d in it:
            if not d.name.endswith(".lock"):
                continue
            if d.path[: -len(".lock")] not in self._temps:
                fd = _try_lock(d.path, fcntl.LOCK_SH, create=False)
                if fd is not None or not os.path.exists(d.path):  # nobody holds it: a dead download reserves nothing
                    if fd is not None:
                        os.close(fd)
                    continue
            with contextlib.suppress(OSError, ValueError), open(d.path, "rb") as f:
                total += int(f.read(32) or b"0")
        return total

    def _make_room(self, adapter: str, size: int) -> None:
        """Under the cache lock: evict unused adapters until ``size`` more bytes fit."""
        if size > self.max_bytes:
            raise AdapterRefused(
                adapter, "cache-full",
                f"it is {size} bytes, more than the whole cache ({self.max_bytes} bytes; "
                "raise VLLM_PLUGIN_LORA_STORE_CACHE_MAX_BYTES)",
            )
        disk = self._on_disk()
        total = sum(s for _, _, s in disk) + self._reserved()
        if total + size <= self.max_bytes:
            return
        now = time.monotonic()
        for entry in self._entries.values():  # expired leases of this process
            if entry.lease is not None and not self.in_use(entry, now):
                self._release(entry)
        for _, name, nbytes in disk:  # least recently used first
            if total + size <= self.max_bytes:
                break
            if name in self.pinned or name == adapter:
                continue
            entry = self._entries.get(name)
            if entry is not None and self.in_use(entry, now):
                continue
            lease = os.path.join(self.leases_dir, name)
            fd = _try_lock(lease, fcntl.LOCK_EX)
            if fd is None:
                continue  # another process uses it
            try:
                self._entries.pop(name, None)
                self._delete(os.path.join(self.adapters_dir, name), name)
                _unlink(lease)
            finally:
                os.close(fd)
            total -= nbytes
            self.evictions += 1
            logger.info("LoRA cache: evicted %r (%d bytes, least recently used)", name, nbytes)
        if total + size > self.max_bytes:
            raise AdapterRefused(
                adapter, "cache-full",
                f"it needs {size} bytes but the cache ({self.max_bytes} bytes) is full of adapters in use "
                "or being downloaded (raise VLLM_PLUGIN_LORA_STORE_CACHE_MAX_BYTES, or set "
                "VLLM_PLUGIN_LORA_STORE_IN_USE_SECONDS)",
            )

    def install(self, name: str, tmp: str, summary: AdapterSummary) -> Entry:
        """Move a complete, validated download into place, lease it and mark it
        resolved; its reservation becomes the installed adapter. Returns the entry."""
        with self.locked():
            existing = self._entries.get(name)
            if existing is not None and os.path.isdir(existing.path):  # raced with ourselves
                self.touch(name)
                return existing
            if tmp not in self._temps or self._reservation(tmp) < summary.size:
                self._release_temp(tmp)
                self._make_room(name, summary.size)
            final = os.path.join(self.adapters_dir, name)
            size = summary.size
            try:
                os.rename(tmp, final)
            except OSError:
                # another process installed it first: use theirs (validated by them)
                if not os.path.isdir(final):
                    raise
                size = _dir_size(final)
            self._release_temp(tmp)
            entry = Entry(name, final, size, summary)
            self._entries[name] = entry
            self._entries.move_to_end(name)
            self.touch(name)
            return entry

    def _reservation(self, tmp: str) -> int:
        try:
            with open(tmp + ".lock", "rb") as f:
                return int(f.read(32) or b"0")
        except (OSError, ValueError):
            return 0

    def _release_temp(self, tmp: str) -> None:
        fd = self._temps.pop(tmp, None)
        if fd is not None:
            _unlink(tmp + ".lock")
            os.close(fd)

    def discard(self, tmp: str) -> None:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        with self._lock:
            self._release_temp(tmp)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
