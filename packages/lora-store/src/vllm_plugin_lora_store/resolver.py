"""The ``lora_store`` LoRA resolver.

vLLM's OpenAI server calls ``resolve_lora(base_model_name, lora_name)`` (with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``) for a requested model it does not
know. ``base_model_name`` is the server's ``--model`` (path or hub id). The
resolver returns a ``LoRARequest`` pointing into the local cache, or None
(vLLM then answers 404 "The model `<name>` does not exist").

Hit path (adapter cached and validated in this process): a dict lookup and
the ``LoRARequest`` construction, on the event loop. Miss path: one download
per adapter however many requests wait for it (single flight), on the
resolver's own bounded thread pool: list, size check, reserve room in the
cache, fetch into a temp folder, validate, install. The whole miss path has a
deadline (``FETCH_DEADLINE_SECONDS``): past it the resolver answers None with
one WARNING, and the fetch itself stops at its next read.

Negative cache. A refusal, a miss (not in the store) or a failed fetch is
remembered for ``NEGATIVE_TTL_SECONDS``: requests for that name meanwhile are
answered None at once (no listing, no download). A refusal is keyed by the
adapter's listing (names, sizes, ETags or mtimes): after the TTL the name is
listed again, and an unchanged listing is refused again without a download.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from vllm.lora.resolver import LoRAResolver

from vllm_plugin_core.compat import make_lora_request
from vllm_plugin_lora_store.cache import AdapterCache
from vllm_plugin_lora_store.stores import RemoteFile, Store, open_store
from vllm_plugin_lora_store.validate import (
    MAX_HEADER_BYTES,
    PICKLE_SUFFIXES,
    AdapterRefused,
    AdapterSummary,
    check_base_model,
    check_name,
    check_rank,
    validate_adapter_dir,
)

__all__ = ["RESOLVER_NAME", "LoraStoreResolver"]

RESOLVER_NAME = "lora_store"

logger = logging.getLogger("vllm.plugins.lora_store")


class AdapterNotFound(Exception):
    pass


class FetchTimedOut(Exception):
    pass


#: Refusals that depend on the cache's state, not the adapter: never keyed by its listing.
_STATE_REASONS = frozenset({"cache-full"})
_MAX_NEGATIVE = 10_000  # names are client-chosen: bound the memory


@dataclass
class _Negative:
    expires: float  # monotonic
    error: Exception
    fingerprint: tuple | None  # the listing the refusal was decided on (None: not content)


def _fingerprint(files: list[RemoteFile]) -> tuple:
    return tuple(sorted((f.name, f.size, f.version) for f in files))


class LoraStoreResolver(LoRAResolver):
    def __init__(
        self,
        store: Store,
        cache: AdapterCache,
        *,
        max_adapter_bytes: int = 2 << 30,
        allow_pickle: bool = False,
        skip_base_model_check: bool = False,
        max_lora_rank: int | None = None,
        max_header_bytes: int = MAX_HEADER_BYTES,
        negative_ttl: float = 300.0,
        fetch_deadline: float = 300.0,
        fetch_threads: int = 4,
    ) -> None:
        self.store = store
        self.cache = cache
        self.max_adapter_bytes = max_adapter_bytes
        self.allow_pickle = allow_pickle
        self.skip_base_model_check = skip_base_model_check
        self.max_lora_rank = max_lora_rank
        self.max_header_bytes = max_header_bytes
        self.negative_ttl = negative_ttl
        self.fetch_deadline = fetch_deadline
        self._pool = ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="lora-store")
        self._negative: OrderedDict[str, _Negative] = OrderedDict()
        self._inflight: dict[str, asyncio.Future] = {}
        self._ids: dict[str, int] = {}
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._logged: set[tuple[str, str]] = set()
        self._last_listing: dict[str, tuple] = {}
        self.downloads = 0  # fetches started (for diagnostics and tests)
        self.listings = 0  # store listings

    @classmethod
    def from_settings(cls, environ: Any = None) -> LoraStoreResolver:
        from vllm_plugin_lora_store._settings import SETTINGS, default_cache_dir

        s = SETTINGS.read_all(environ)
        cache = AdapterCache(
            s["CACHE_DIR"] or default_cache_dir(),
            s["CACHE_MAX_BYTES"],
            in_use_seconds=s["IN_USE_SECONDS"],
            pinned=s["PINNED"],
        )
        return cls(
            open_store(s["URI"], read_timeout=s["READ_TIMEOUT_SECONDS"], pool=s["FETCH_THREADS"]),
            cache,
            max_adapter_bytes=s["MAX_ADAPTER_BYTES"],
            allow_pickle=s["ALLOW_PICKLE"],
            skip_base_model_check=s["SKIP_BASE_MODEL_CHECK"],
            max_lora_rank=s["MAX_LORA_RANK"],
            max_header_bytes=s["MAX_HEADER_BYTES"],
            negative_ttl=s["NEGATIVE_TTL_SECONDS"],
            fetch_deadline=s["FETCH_DEADLINE_SECONDS"],
            fetch_threads=s["FETCH_THREADS"],
        )

    def __repr__(self) -> str:
        return f"LoraStoreResolver({self.store!r}, cache={self.cache.root!r})"

    # --- the vLLM interface ---

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
        try:
            name = check_name(lora_name)
            entry = self.cache.get(name)
            if (
                entry is not None and entry.summary is not None and os.path.isdir(entry.path)
                and self.cache.touch(name)
            ):
                self._check_server(name, entry.summary, base_model_name)
                path = entry.path
            else:
                neg = self._negative.get(name)
                if neg is not None and time.monotonic() < neg.expires:
                    raise neg.error
                path = await self._single_flight(name, base_model_name)
        except FetchTimedOut:
            self._log_once(
                logging.WARNING, lora_name, "deadline",
                "LoRA adapter %r: fetching it from %s took more than %g s "
                "(VLLM_PLUGIN_LORA_STORE_FETCH_DEADLINE_SECONDS); answering None",
                lora_name, self.store.uri, self.fetch_deadline,
            )
            return None
        except AdapterRefused as exc:
            self._log_once(logging.WARNING, exc.adapter, exc.reason, "%s", exc)
            return None
        except AdapterNotFound:
            self._log_once(
                logging.INFO, lora_name, "not-found",
                "LoRA adapter %r not found in %s", lora_name, self.store.uri,
            )
            return None
        except Exception as exc:  # store unreachable, permissions, ...: never take the server down
            self._log_once(
                logging.WARNING, str(lora_name), f"error:{type(exc).__name__}",
                "LoRA adapter %r could not be fetched from %s: %s: %s",
                lora_name, self.store.uri, type(exc).__name__, exc,
            )
            return None
        return make_lora_request(
            lora_name=name,
            lora_int_id=self._id_for(name),
            lora_path=path,
            base_model_name=base_model_name,
        )

    # --- helpers ---

    def _id_for(self, name: str) -> int:
        lora_id = self._ids.get(name)
        if lora_id is None:
            with self._lock:
                lora_id = self._ids.setdefault(name, next(self._counter))
        return lora_id

    def _log_once(self, level: int, adapter: str, reason: str, msg: str, *args: Any) -> None:
        key = (adapter, reason)
        if key in self._logged:
            logger.debug(msg, *args)
            return
        if len(self._logged) >= 10_000:  # names are client-chosen: bound the memory
            self._logged.clear()
        self._logged.add(key)
        logger.log(level, msg, *args)

    def _check_server(self, name: str, summary: AdapterSummary, base_model_name: str | None) -> None:
        if not self.skip_base_model_check:
            check_base_model(name, summary.base_model, base_model_name)
        check_rank(name, summary.rank, self.max_lora_rank)

    def _remember(self, name: str, error: Exception, fingerprint: tuple | None) -> None:
        """Refusals and misses: for the TTL; cache-full: 5 s; stalls: 30 s. Other
        errors (network, permissions) are not remembered: the next request retries."""
        if self.negative_ttl <= 0:
            return
        ttl = self.negative_ttl
        if isinstance(error, AdapterRefused) and error.reason in _STATE_REASONS:
            ttl, fingerprint = min(ttl, 5.0), None  # no download was made: re-check soon
        elif not isinstance(error, (AdapterRefused, AdapterNotFound)):
            ttl, fingerprint = min(ttl, 30.0), None
        with self._lock:
            self._negative.pop(name, None)
            if len(self._negative) >= _MAX_NEGATIVE:
                self._negative.popitem(last=False)
            self._negative[name] = _Negative(time.monotonic() + ttl, error, fingerprint)

    async def _single_flight(self, name: str, base_model_name: str | None) -> str:
        fut = self._inflight.get(name)
        if fut is None:
            deadline = time.monotonic() + self.fetch_deadline
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self._pool, self._obtain_remembering, name, base_model_name, deadline)
            fut.deadline = deadline  # type: ignore[attr-defined]
            self._inflight[name] = fut

            def _done(f: asyncio.Future, name: str = name) -> None:
                if self._inflight.get(name) is f:
                    del self._inflight[name]
                if not f.cancelled():
                    f.exception()  # retrieved: a waiter that timed out must not leave it unread

            fut.add_done_callback(_done)
        # shield: a client that disconnects does not cancel the download for the others
        left = fut.deadline - time.monotonic()  # type: ignore[attr-defined]
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout=max(left, 0) + 0.05)
        except asyncio.TimeoutError:
            if not fut.done():
                self._remember(name, FetchTimedOut(name), None)
            raise FetchTimedOut(name) from None

    def _obtain_remembering(self, name: str, base_model_name: str | None, deadline: float) -> str:
        prior = self._negative.get(name)
        hint = prior.fingerprint if prior is not None else None
        try:
            path = self._obtain(name, base_model_name, deadline, hint)
        except (AdapterRefused, AdapterNotFound) as exc:
            fingerprint = self._listed_fingerprint(name)
            if not getattr(exc, "local_copy", False):
                self._remember(name, exc, fingerprint)
            raise
        except TimeoutError as exc:  # a stalled store: do not tie up a thread again at once
            self._remember(name, exc, None)
            raise
        with self._lock:
            self._negative.pop(name, None)
        return path

    def _listed_fingerprint(self, name: str) -> tuple | None:
        with self._lock:
            return self._last_listing.pop(name, None)

    def _select(self, name: str, files: list[RemoteFile]) -> list[RemoteFile]:
        names = {f.name for f in files}
        if "adapter_config.json" not in names:
            raise AdapterRefused(name, "missing-config", "it has no adapter_config.json")
        if not self.allow_pickle:
            pickles = sorted(f.name for f in files if f.name.lower().endswith(PICKLE_SUFFIXES))
            if pickles and "adapter_model.safetensors" not in names:
                raise AdapterRefused(
                    name, "pickle",
                    f"its weights are pickle files ({', '.join(pickles)}), which can run code when loaded "
                    "(convert them to adapter_model.safetensors, or set VLLM_PLUGIN_LORA_STORE_ALLOW_PICKLE=1)",
                )
            # pickle files next to safetensors weights are simply not fetched
            files = [f for f in files if not f.name.lower().endswith(PICKLE_SUFFIXES)]
        total = sum(f.size for f in files)
        if total > self.max_adapter_bytes:
            raise AdapterRefused(
                name, "size",
                f"it is {total} bytes, more than VLLM_PLUGIN_LORA_STORE_MAX_ADAPTER_BYTES={self.max_adapter_bytes}",
            )
        return files

    def fetch(self, name: str, files: list[RemoteFile], dest: str, deadline: float | None = None) -> None:
        """Copy the adapter's files into ``dest`` (the one place bytes move)."""
        with self._lock:
            self.downloads += 1
        self.store.fetch(name, files, dest, deadline=deadline)

    def _validate(self, name: str, path: str) -> AdapterSummary:
        return validate_adapter_dir(
            name, path, allow_pickle=self.allow_pickle, max_header_bytes=self.max_header_bytes
        )

    def _obtain(self, name: str, base_model_name: str | None, deadline: float, hint: tuple | None) -> str:
        """Blocking: make ``name`` present and validated in the cache; return its path.

        ``hint``: the listing an earlier refusal was decided on; an identical
        listing is refused again without a download.
        """
        self.cache.open()
        entry = self.cache.get(name)
        if entry is not None and self.cache.acquire(name):
            summary = entry.summary
            if summary is None:  # cached by an earlier process: validate again
                try:
                    summary = self._validate(name, entry.path)
                except AdapterRefused as exc:
                    self.cache.remove(name)
                    exc.local_copy = True  # type: ignore[attr-defined]  # says nothing of the store
                    raise
                self.cache.set_summary(name, summary)
            self._check_server(name, summary, base_model_name)
            return entry.path
        if entry is not None:  # deleted behind our back
            self.cache.remove(name)
        with self._lock:
            self.listings += 1
        files = self.store.list_files(name)
        if files is None:
            raise AdapterNotFound(name)
        fingerprint = _fingerprint(files)
        with self._lock:
            self._last_listing[name] = fingerprint
        prior = self._negative.get(name)
        if hint is not None and hint == fingerprint and prior is not None:
            raise prior.error  # unchanged since it was refused: no download
        files = self._select(name, files)
        # cache-full is decided here, from the listed size, before any download;
        # the reservation counts these bytes against the bound until installed
        tmp = self.cache.new_temp(name, reserve=sum(f.size for f in files))
        try:
            self.fetch(name, files, tmp, deadline)
            summary = self._validate(name, tmp)
            if summary.size > self.max_adapter_bytes:
                raise AdapterRefused(
                    name, "size",
                    f"it is {summary.size} bytes, more than "
                    f"VLLM_PLUGIN_LORA_STORE_MAX_ADAPTER_BYTES={self.max_adapter_bytes}",
                )
            self._check_server(name, summary, base_model_name)
            entry = self.cache.install(name, tmp, summary)
        finally:
            self.cache.discard(tmp)
        logger.info("LoRA adapter %r fetched from %s (%d bytes)", name, self.store.uri, summary.size)
        return entry.path
