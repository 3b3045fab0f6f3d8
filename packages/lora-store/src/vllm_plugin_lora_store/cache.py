"""The local adapter cache: atomic installs, LRU eviction under a size bound.

Layout under the cache directory::

    adapters/<name>/     complete, validated adapters (what vLLM is pointed at)
    tmp/<name>.<pid>.<random>/   downloads in progress, and evictions being deleted

A download is written to ``tmp/`` and renamed into ``adapters/`` only when it
is complete and validated, so a crash or kill leaves at most a temp folder,
which the next process to open the cache deletes (temp folders of live
processes are left alone, so several servers may share one cache).

In use. vLLM gives a resolver no "unloaded" callback, calls it only once per
adapter name (it then keeps the ``LoRARequest``), and its workers may re-read
``lora_path`` at any time (after dropping the adapter from their CPU LRU). So
an adapter resolved by this process is in use, never evicted, for
``in_use_seconds`` after it was last resolved, 0 meaning for the life of the
process (the default, and the only setting that is always safe); pinned names
are never evicted. When everything cached is in use and a new adapter does not
fit, that new adapter is refused (reason ``cache-full``) rather than the bound
exceeded.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from vllm_plugin_lora_store.validate import AdapterRefused, AdapterSummary

__all__ = ["AdapterCache", "Entry"]

logger = logging.getLogger("vllm.plugins.lora_store")

STALE_TEMP_SECONDS = 24 * 3600


@dataclass
class Entry:
    name: str
    path: str
    size: int
    summary: AdapterSummary | None = None  # None: found on disk, not yet re-validated
    last_resolved: float | None = None  # monotonic; None: not resolved by this process


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _dir_size(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


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
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.max_bytes = max_bytes
        self.in_use_seconds = in_use_seconds
        self.pinned = frozenset(pinned)
        self._lock = threading.RLock()
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self._opened = False
        self.evictions = 0

    # --- opening ---

    def open(self) -> None:
        """Create the folders, delete stale temp folders, index what is cached."""
        with self._lock:
            if self._opened:
                return
            os.makedirs(self.adapters_dir, exist_ok=True)
            os.makedirs(self.tmp_dir, exist_ok=True)
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

    def clean_stale_temps(self) -> int:
        """Delete temp folders left by dead processes (or older than a day)."""
        removed = 0
        now = time.time()
        try:
            entries = list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            return 0
        for d in entries:
            parts = d.name.rsplit(".", 2)
            try:
                pid = int(parts[-2]) if len(parts) == 3 else -1
            except ValueError:
                pid = -1
            try:
                old = now - d.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS
            except OSError:
                continue
            if pid == os.getpid() and not old:
                continue
            if old or not _pid_alive(pid):
                if d.is_dir(follow_symlinks=False):
                    shutil.rmtree(d.path, ignore_errors=True)
                else:
                    try:
                        os.unlink(d.path)
                    except OSError:
                        pass
                removed += 1
        if removed:
            logger.info("LoRA cache %s: removed %d unfinished download(s)", self.root, removed)
        return removed

    # --- queries (fast: called on the event loop) ---

    def get(self, name: str) -> Entry | None:
        with self._lock:
            return self._entries.get(name)

    def touch(self, name: str) -> None:
        """Mark ``name`` resolved now: most recently used, and in use."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None:
                entry.last_resolved = time.monotonic()
                self._entries.move_to_end(name)

    def total_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def in_use(self, entry: Entry, now: float | None = None) -> bool:
        if entry.name in self.pinned:
            return True
        if entry.last_resolved is None:
            return False
        if self.in_use_seconds <= 0:
            return True
        now = time.monotonic() if now is None else now
        return now - entry.last_resolved < self.in_use_seconds

    # --- changes (in worker threads) ---

    def new_temp(self, name: str) -> str:
        path = os.path.join(self.tmp_dir, f"{name}.{os.getpid()}.{uuid.uuid4().hex[:12]}")
        os.makedirs(path)
        return path

    def set_summary(self, name: str, summary: AdapterSummary) -> None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None:
                entry.summary = summary
                entry.size = summary.size

    def remove(self, name: str) -> None:
        with self._lock:
            entry = self._entries.pop(name, None)
            if entry is not None:
                self._delete(entry.path, name)

    def _delete(self, path: str, name: str) -> None:
        # rename first, so that a crash mid-delete leaves only a temp folder
        grave = os.path.join(self.tmp_dir, f"evicted-{name}.{os.getpid()}.{uuid.uuid4().hex[:12]}")
        try:
            os.rename(path, grave)
        except OSError:
            grave = path
        shutil.rmtree(grave, ignore_errors=True)

    def _make_room(self, adapter: str, size: int) -> None:
        if size > self.max_bytes:
            raise AdapterRefused(
                adapter, "cache-full",
                f"it is {size} bytes, more than the whole cache ({self.max_bytes} bytes; "
                "raise VLLM_PLUGIN_LORA_STORE_CACHE_MAX_BYTES)",
            )
        total = sum(e.size for e in self._entries.values())
        if total + size <= self.max_bytes:
            return
        now = time.monotonic()
        victims = []
        for entry in self._entries.values():  # least recently used first
            if total + size <= self.max_bytes:
                break
            if self.in_use(entry, now):
                continue
            victims.append(entry)
            total -= entry.size
        if total + size > self.max_bytes:
            raise AdapterRefused(
                adapter, "cache-full",
                f"it needs {size} bytes but the cache ({self.max_bytes} bytes) is full of adapters in use "
                "(raise VLLM_PLUGIN_LORA_STORE_CACHE_MAX_BYTES, or set VLLM_PLUGIN_LORA_STORE_IN_USE_SECONDS)",
            )
        for entry in victims:
            del self._entries[entry.name]
            self._delete(entry.path, entry.name)
            self.evictions += 1
            logger.info("LoRA cache: evicted %r (%d bytes, least recently used)", entry.name, entry.size)

    def install(self, name: str, tmp: str, summary: AdapterSummary) -> Entry:
        """Move a complete, validated download into place (evicting as needed)
        and mark it resolved. Returns the cache entry."""
        with self._lock:
            existing = self._entries.get(name)
            if existing is not None:  # raced with ourselves: keep the first
                existing.last_resolved = time.monotonic()
                self._entries.move_to_end(name)
                return existing
            self._make_room(name, summary.size)
            final = os.path.join(self.adapters_dir, name)
            try:
                os.rename(tmp, final)
            except OSError:
                # another process installed it first: use theirs
                if not os.path.isdir(final):
                    raise
            entry = Entry(name, final, summary.size, summary, time.monotonic())
            self._entries[name] = entry
            return entry

    @staticmethod
    def discard(tmp: str) -> None:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
