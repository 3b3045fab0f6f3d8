"""The ``lora_store`` LoRA resolver.

vLLM's OpenAI server calls ``resolve_lora(base_model_name, lora_name)`` (with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``) for a requested model it does not
know. ``base_model_name`` is the server's ``--model`` (path or hub id). The
resolver returns a ``LoRARequest`` pointing into the local cache, or None
(vLLM then answers 404 "The model `<name>` does not exist").

Hit path (adapter cached and validated in this process): a dict lookup and
the ``LoRARequest`` construction, on the event loop. Miss path: one download
per adapter however many requests wait for it (single flight), in a worker
thread: list, size check, fetch into a temp folder, validate, install.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from typing import Any

from vllm.lora.resolver import LoRAResolver

from vllm_plugin_core.compat import make_lora_request
from vllm_plugin_lora_store.cache import AdapterCache
from vllm_plugin_lora_store.stores import RemoteFile, Store, open_store
from vllm_plugin_lora_store.validate import (
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
    ) -> None:
        self.store = store
        self.cache = cache
        self.max_adapter_bytes = max_adapter_bytes
        self.allow_pickle = allow_pickle
        self.skip_base_model_check = skip_base_model_check
        self.max_lora_rank = max_lora_rank
        self._inflight: dict[str, asyncio.Future] = {}
        self._ids: dict[str, int] = {}
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._logged: set[tuple[str, str]] = set()
        self.downloads = 0  # completed fetches (for diagnostics and tests)

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
            open_store(s["URI"]),
            cache,
            max_adapter_bytes=s["MAX_ADAPTER_BYTES"],
            allow_pickle=s["ALLOW_PICKLE"],
            skip_base_model_check=s["SKIP_BASE_MODEL_CHECK"],
            max_lora_rank=s["MAX_LORA_RANK"],
        )

    def __repr__(self) -> str:
        return f"LoraStoreResolver({self.store!r}, cache={self.cache.root!r})"

    # --- the vLLM interface ---

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
        try:
            name = check_name(lora_name)
            entry = self.cache.get(name)
            if entry is not None and entry.summary is not None and os.path.isdir(entry.path):
                self._check_server(name, entry.summary, base_model_name)
                self.cache.touch(name)
                path = entry.path
            else:
                path = await self._single_flight(name, base_model_name)
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

    async def _single_flight(self, name: str, base_model_name: str | None) -> str:
        fut = self._inflight.get(name)
        if fut is None:
            fut = asyncio.ensure_future(asyncio.to_thread(self._obtain, name, base_model_name))
            self._inflight[name] = fut

            def _done(f: asyncio.Future, name: str = name) -> None:
                if self._inflight.get(name) is f:
                    del self._inflight[name]

            fut.add_done_callback(_done)
        # shield: a client that disconnects does not cancel the download for the others
        return await asyncio.shield(fut)

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

    def fetch(self, name: str, files: list[RemoteFile], dest: str) -> None:
        """Copy the adapter's files into ``dest`` (the one place bytes move)."""
        self.store.fetch(name, files, dest)

    def _obtain(self, name: str, base_model_name: str | None) -> str:
        """Blocking: make ``name`` present and validated in the cache; return its path."""
        self.cache.open()
        entry = self.cache.get(name)
        if entry is not None and os.path.isdir(entry.path):
            summary = entry.summary
            if summary is None:  # cached by an earlier process: validate again
                try:
                    summary = validate_adapter_dir(name, entry.path, allow_pickle=self.allow_pickle)
                except AdapterRefused:
                    self.cache.remove(name)
                    raise
                self.cache.set_summary(name, summary)
            self._check_server(name, summary, base_model_name)
            self.cache.touch(name)
            return entry.path
        if entry is not None:  # deleted behind our back
            self.cache.remove(name)
        files = self.store.list_files(name)
        if files is None:
            raise AdapterNotFound(name)
        files = self._select(name, files)
        tmp = self.cache.new_temp(name)
        try:
            self.fetch(name, files, tmp)
            self.downloads += 1
            summary = validate_adapter_dir(name, tmp, allow_pickle=self.allow_pickle)
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
