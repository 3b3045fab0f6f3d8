"""The three logits processors vLLM loads from ``vllm.logits_processors``.

Each class serves both of vLLM's model runners through core's compatibility
layer. State is batched and device-resident, one row per request slot
(:mod:`.penalties`, :mod:`.xtc`):

* V1 runner (CPU builds, all versions): ``update_state`` admits, drops and
  moves rows; ``apply(logits)`` reads each active row's new output token from
  vLLM's live list (the only per-row host work; V1 hands over Python lists).
* V2 runner (CUDA builds from 0.31): ``add_request`` stages a slot;
  ``apply_staged_writes`` admits it from the runner's on-device token history;
  ``apply(logits, ctx)`` runs a fixed number of batched tensor operations with
  no host sync. Speculative draft rows are penalised against the committed
  context plus the drafts before them (from ``ctx.input_ids``), without
  committing the drafts.

A batch without any request that asked for a sampler returns the logits
untouched after one host-side check.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import numpy as np
import torch

from vllm_plugin_core import compat
from vllm_plugin_core.guard import is_strict
from vllm_plugin_samplers import params as P
from vllm_plugin_samplers.breakers import MAX_CHARS, WIRE_KEY, BreakerSet, Resolver, from_wire, load_resolver
from vllm_plugin_samplers.penalties import DryBatch, NgramBatch, _upload
from vllm_plugin_samplers.xtc import FULL, GROUP, band_of, coin, group_keys, group_plan, top_k_for, xtc_apply

logger = logging.getLogger("vllm.plugins.samplers")

__all__ = ["DryLogitsProcessor", "NoRepeatNgramLogitsProcessor", "XtcLogitsProcessor"]

_DEFAULT_SLOTS = 256


def make_resolver(vllm_config: Any) -> Resolver:
    """The breaker resolver for the model's tokenizer (built once, at start)."""
    mc = vllm_config.model_config
    return load_resolver(str(mc.tokenizer), bool(mc.trust_remote_code), getattr(mc, "tokenizer_revision", None))


# V2: processors told when vLLM's runner frees a request slot, keyed by the id
# of the request state's token-history tensor (one runner, one key).
_WATCHERS: dict[int, list[weakref.ref]] = {}
_REMOVAL_CLASSES = (("vllm.v1.worker.gpu.states", "RequestState"),  # vLLM's V2 GPU runner
                    ("vllm.v1.worker.cpu.states", "CPURequestState"))  # 0.34's standalone CPU runner


def _history_tensor(buffer: Any) -> Any:
    return getattr(buffer, "gpu", buffer)


def _notify_removed(req_states: Any, slot: int) -> None:
    t = _history_tensor(getattr(req_states, "all_token_ids", None))
    for ref in list(_WATCHERS.get(id(t), ())):
        proc = ref()
        if proc is not None and _history_tensor(proc.req_states.all_token_ids) is t:
            proc.request_removed(slot)


def _watch_removals(proc: _SamplerProcessor) -> bool:
    """V2 has no "request finished" callback: vLLM's runners free a finished
    (or preempted) request's slot with their request state's
    ``remove_request(req_id) -> slot``. Wrap that method (once per class) so
    that ``proc`` hears of it and releases the slot then, not when the slot
    is next reused. False where this vLLM has no such method."""
    import importlib

    watched = False
    for module, name in _REMOVAL_CLASSES:
        try:
            cls = getattr(importlib.import_module(module), name)
        except Exception:  # that runner is not in this vLLM
            continue
        orig = getattr(cls, "remove_request", None)
        if orig is None:
            continue
        if not getattr(orig, "_vllm_plugin_samplers", False):
            def remove_request(self: Any, req_id: Any, *args: Any, _orig: Any = orig, **kwargs: Any) -> Any:
                slot = _orig(self, req_id, *args, **kwargs)
                if isinstance(slot, int):
                    _notify_removed(self, slot)
                return slot

            remove_request._vllm_plugin_samplers = True  # type: ignore[attr-defined]
            remove_request.__wrapped__ = orig  # type: ignore[attr-defined]
            cls.remove_request = remove_request
        watched = True
    for key in [k for k, refs in _WATCHERS.items() if all(r() is None for r in refs)]:
        del _WATCHERS[key]  # runners gone (and their processors)
    key = id(_history_tensor(proc.req_states.all_token_ids))
    refs = [r for r in _WATCHERS.get(key, ()) if r() is not None]
    _WATCHERS[key] = [*refs, weakref.ref(proc)]
    return watched


def _num_spec(vllm_config: Any) -> int:
    spec = getattr(vllm_config, "speculative_config", None)
    return int(getattr(spec, "num_speculative_tokens", 0) or 0) if spec is not None else 0


class _SamplerProcessor(*compat.logits_processor_bases("vllm-plugin-samplers")):  # type: ignore[misc]
    """Shared plumbing: which slots are active, V1 row bookkeeping, V2 staging."""

    parse = staticmethod(lambda extra_args: None)
    needs_tokens = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.v2 = compat.is_v2_logits_init(args, kwargs)
        self.vllm_config = kwargs.get("vllm_config", args[0] if args else None)
        cfg = self.vllm_config
        if self.v2:
            self.req_states = kwargs.get("req_states", args[1] if len(args) > 1 else None)
            self.device = torch.device(self.req_states.device)
            slots = int(self.req_states.max_num_reqs)
            self.vocab = int(self.req_states.vocab_size)
        else:
            self.req_states = None
            self.device = torch.device(kwargs.get("device", args[1] if len(args) > 1 else "cpu") or "cpu")
            slots = int(getattr(getattr(cfg, "scheduler_config", None), "max_num_seqs", 0) or _DEFAULT_SLOTS)
            mc = getattr(cfg, "model_config", None)
            self.vocab = int(mc.get_vocab_size()) if mc is not None else 0
        self.slots = slots
        self.num_spec = _num_spec(cfg)
        seed = getattr(getattr(cfg, "model_config", None), "seed", None)
        # Seeds for unseeded requests: the same stream on every rank (same
        # config seed, same order of requests), as vLLM's own sampler.
        self._rng = np.random.default_rng(0 if seed is None else int(seed))
        self.active_np = np.zeros(slots + 1, dtype=bool)
        self.active = torch.zeros(slots + 1, dtype=torch.bool, device=self.device)
        # V1: row -> (prompt length, live output ids, tokens seen); V2: slots to admit.
        self.rows: dict[int, tuple[Any, Any, int]] = {}
        self._staged: list[tuple[int, Any]] = []
        # V2: host upper bound of each slot's length (the bank's width follows the active slots).
        self.len_ub = np.zeros(slots + 1, dtype=np.int64)
        #: Failures contained inside the engine, by where they happened.
        self.failures: dict[str, int] = {}
        if self.v2:
            _watch_removals(self)

    # ---- containment: a failure here never reaches the engine (outside strict mode) ----
    def _contain(self, where: str, exc: Exception, slots: Any) -> None:
        """Count and log (once per place) a failure inside the engine; re-raise
        it under ``VLLM_PLUGIN_STRICT=1``. The caller turns the sampler off for
        the requests concerned, which go on without it."""
        if is_strict():
            raise exc
        self.failures[where] = self.failures.get(where, 0) + 1
        if self.failures[where] == 1:
            slots = [int(s) for s in np.asarray(slots, dtype=np.int64).reshape(-1)]
            logger.error("vllm-plugin-samplers: %s failed in %s for request slot(s) %s: %s: %s. Those requests "
                         "continue without it and the engine keeps serving; later failures here are counted, not "
                         "logged. Set VLLM_PLUGIN_STRICT=1 to make this fatal.", self.__vllm_plugin_name__, where,
                         slots, type(exc).__name__, exc, exc_info=exc)

    def _turn_off(self, slots: Any) -> None:
        """The sampler stops for these slots (V1 rows or V2 request slots)."""
        for slot in np.asarray(slots, dtype=np.int64).reshape(-1).tolist():
            self.rows.pop(slot, None)
            self._staged = [(s, q) for s, q in self._staged if s != slot]
            self._set_active(slot, False)

    # ---- shared ----
    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        cls.parse(getattr(sampling_params, "extra_args", None))

    def is_argmax_invariant(self) -> bool:
        return False

    def _params(self, sampling_params: Any) -> Any:
        return self.parse(getattr(sampling_params, "extra_args", None))

    def _admit(self, slot: int, p: Any, sampling_params: Any, tokens: torch.Tensor) -> None:
        """Set slot ``slot`` up for a request with parsed arguments ``p``."""
        raise NotImplementedError

    def _set_active(self, slot: int, on: bool) -> None:
        self.active_np[slot] = on
        self.active[slot] = on
        if not on:
            self._release(slot)

    def _release(self, slot: int) -> None:
        """A request left ``slot`` (or never used the sampler there): free what it held."""

    # ---- V1 model runner ----
    def update_state(self, batch_update: Any) -> None:
        try:
            self._update_state(batch_update)
        except Exception as exc:  # bookkeeping is then unknown: every row goes on without the sampler
            self._contain("update_state", exc, sorted(self.rows))
            self._turn_off(sorted(self.rows))

    def _update_state(self, batch_update: Any) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._drop_row(index)
        added: dict[int, tuple[Any, Any, Any, Any]] = {}
        for index, sampling_params, prompt_ids, output_ids in batch_update.added:
            p = self._params(sampling_params)
            self._drop_row(index)
            added.pop(index, None)
            if p is not None:
                added[index] = (p, sampling_params, prompt_ids or (), output_ids)
        if added:
            self._admit_added(added)
        _, direction = compat.batch_update_types()
        for a, b, how in batch_update.moved:
            swap = how == direction.SWAP
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if swap and rb is not None:
                self.rows[a] = rb
            self._move(a, b, swap)
            for s in (a, b):
                self._set_active(s, s in self.rows)

    def _admit_added(self, added: dict[int, tuple[Any, Any, Any, Any]]) -> None:
        """V1: admit the rows ``index -> (params, sampling params, prompt ids,
        vLLM's live output list)`` of one batch update."""
        for index, (p, sampling_params, prompt, output_ids) in added.items():
            try:
                toks = (torch.tensor([*prompt, *output_ids], dtype=torch.long, device=self.device)
                        if self.needs_tokens else None)
                self._admit(index, p, sampling_params, toks)
            except Exception as exc:
                self._contain("admission", exc, [index])
                continue
            self._add_row(index, prompt, output_ids)

    def _add_row(self, index: int, prompt: Any, output_ids: Any) -> None:
        # vLLM's live output list and the prompt's length: no copy of the context.
        self.rows[index] = (len(prompt), output_ids, len(prompt) + len(output_ids))
        self._set_active(index, True)

    def _drop_row(self, index: int) -> None:
        if self.rows.pop(index, None) is not None:
            self._set_active(index, False)

    def _move(self, a: int, b: int, swap: bool) -> None:
        raise NotImplementedError

    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        try:
            if ctx is not None:
                return self._apply_v2(logits, ctx)
            if self.rows:
                self._apply_v1(logits)
        except Exception as exc:  # the rows' state is then unknown: they go on without the sampler
            slots = sorted(self.rows) if ctx is None else ctx.idx_mapping_np[self.active_np[ctx.idx_mapping_np]]
            self._contain("apply", exc, list(slots))
            self._turn_off(slots)
        return logits

    def _apply_v1(self, logits: torch.Tensor) -> None:
        raise NotImplementedError

    def _v1_new_tokens(self) -> tuple[list[int], list[list[int]]]:
        """Active rows and each row's output tokens appended since the last step."""
        rows = sorted(self.rows)
        new: list[list[int]] = []
        for r in rows:
            n_prompt, out, seen = self.rows[r]
            total = n_prompt + len(out)
            new.append(list(out[seen - n_prompt:]) if total > seen else [])
            self.rows[r] = (n_prompt, out, total)
        return rows, new

    # ---- V2 model runner ----
    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        try:
            return self._add_request(req_idx, sampling_params)
        except Exception as exc:
            self._contain("add_request", exc, [req_idx])
            self._turn_off([req_idx])
            self._staged_off = getattr(self, "_staged_off", set()) | {req_idx}
            return False

    def _add_request(self, req_idx: int, sampling_params: Any) -> bool:
        p = self._params(sampling_params)
        self.active_np[req_idx] = p is not None
        self._staged = [(s, q) for s, q in self._staged if s != req_idx]
        if p is None:
            self._staged_off = getattr(self, "_staged_off", set()) | {req_idx}
            return False
        self._staged.append((req_idx, (p, sampling_params)))
        return True

    def request_removed(self, slot: int) -> None:
        """V2: vLLM's runner freed ``slot`` (its request finished or was
        preempted): the slot stops counting as active and its state is
        released now (the bank may shrink), not when the slot is reused."""
        try:
            self._staged = [(s, q) for s, q in self._staged if s != slot]
            if self.active_np[slot]:
                self.active_np[slot] = False
                self.active[slot:slot + 1].fill_(False)  # a scalar kernel argument, no copy
            self.len_ub[slot] = 0
            self._release(slot)
        except Exception as exc:
            self._contain("request_removed", exc, [slot])

    def _take_staged(self) -> list[tuple[int, tuple[Any, Any]]]:
        """Turn off the slots staged off; return (and clear) the staged admissions."""
        for slot in getattr(self, "_staged_off", ()):
            self.active[slot] = False
            self._release(slot)
        self._staged_off = set()
        staged, self._staged = self._staged, []
        return staged

    def _staged_or_contained(self) -> list[tuple[int, tuple[Any, Any]]] | None:
        """V2: this step's staged requests, or None when taking them failed
        (contained: those requests' rows are left as they are)."""
        try:
            return self._take_staged()
        except Exception as exc:
            self._contain("apply_staged_writes", exc, [s for s, _ in self._staged])
            self._turn_off([s for s, _ in self._staged])
            return None

    def _mark_admitted(self, added: dict[int, tuple[Any, Any, Any, Any]], slots: list[int], dev: Any) -> None:
        """V1: the admitted rows' lengths on the host, their slots active."""
        for i in slots:
            _, _, prompt, output_ids = added[i]
            self.rows[i] = (len(prompt), output_ids, len(prompt) + len(output_ids))
        self.active_np[slots] = True
        self.active.index_fill_(0, dev, True)

    def apply_staged_writes(self) -> None:
        staged = self._staged_or_contained()
        if staged is None:
            return
        for slot, (p, sampling_params) in staged:
            try:
                self._admit_staged(slot, p, sampling_params)
                self.active[slot] = True
            except Exception as exc:
                self._contain("admission", exc, [slot])
                self._turn_off([slot])

    def _admit_staged(self, slot: int, p: Any, sampling_params: Any) -> None:
        n = int(self.req_states.prefill_len.np[slot])
        self.len_ub[slot] = n
        self._admit(slot, p, sampling_params, self.req_states.all_token_ids.gpu[slot, :n])

    def _apply_v2(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        if not self.active_np[ctx.idx_mapping_np].any():
            return logits
        self._apply_rows_v2(logits, ctx)
        return logits

    def _apply_rows_v2(self, logits: torch.Tensor, ctx: Any) -> None:
        raise NotImplementedError


class _SuffixProcessor(_SamplerProcessor):
    """DRY and n-gram: a batched suffix-match engine (:mod:`.penalties`)."""

    batch: DryBatch | NgramBatch

    def _move(self, a: int, b: int, swap: bool) -> None:
        bank = self.batch.bank
        bank.move(a, b, swap)
        for t in [*self._slot_tensors(), self.batch.window, self.batch.band, self.batch.band_np]:
            if swap:
                t[[a, b]] = t[[b, a]]
            else:
                t[b] = t[a]

    def _slot_tensors(self) -> list[torch.Tensor]:
        return [self.batch.cap]

    def _entry(self, slot: int, p: Any, sampling_params: Any) -> tuple:
        """Host side of one admission: the batch entry of request slot ``slot``."""
        raise NotImplementedError

    def _admit(self, slot: int, p: Any, sampling_params: Any, tokens: torch.Tensor) -> None:
        self.batch.admit_rows([self._entry(slot, p, sampling_params)], [tokens.numel()],
                              tokens.to(self.device)[None], [0], [0])

    def _entries(self, items: list[tuple[int, Any, Any]]) -> list[tuple]:
        """Entries of the requests ``(slot, params, sampling params)`` whose host
        side succeeds (each failure contained for its request alone)."""
        entries = []
        for slot, p, sampling_params in items:
            try:
                entries.append(self._entry(slot, p, sampling_params))
            except Exception as exc:
                self._contain("admission", exc, [slot])
                self._turn_off([slot])
        return entries

    def _admit_added(self, added: dict[int, tuple[Any, Any, Any, Any]]) -> None:
        """V1: every added row in one batched admission (the contexts packed in one tensor)."""
        entries = self._entries([(i, p, sp) for i, (p, sp, _, _) in added.items()])
        if not entries:
            return
        slots = [e[0] for e in entries]
        lengths = np.asarray([len(added[i][2]) + len(added[i][3]) for i in slots], dtype=np.int64)
        flat = [t for i in slots for part in (added[i][2], added[i][3]) for t in part]
        try:
            source = torch.tensor(flat, dtype=torch.long, device=self.device)[None]
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            dev = self.batch.admit_rows(entries, lengths, source, np.zeros(len(slots), dtype=np.int64), starts)
        except Exception as exc:
            self._contain("admission", exc, slots)
            self._turn_off(slots)
            return
        self._mark_admitted(added, slots, dev)

    def apply_staged_writes(self) -> None:
        """V2: every staged request in one batched admission from the runner's token history."""
        staged = self._staged_or_contained()
        if staged is None:
            return
        entries = self._entries([(slot, p, sp) for slot, (p, sp) in staged])
        if not entries:
            return
        slots = np.asarray([e[0] for e in entries], dtype=np.int64)
        try:
            n = self.req_states.prefill_len.np[slots].astype(np.int64)
            self.len_ub[slots] = n
            dev = self.batch.admit_rows(entries, n, self.req_states.all_token_ids.gpu, slots, np.zeros_like(slots))
            self.active.index_fill_(0, dev, True)
        except Exception as exc:
            self._contain("admission", exc, slots)
            self._turn_off(slots)

    def _release(self, slot: int) -> None:
        """Free what the slot held; the bank gives its width back if the
        requests still active need a quarter of it or less."""
        b = self.batch
        b.release(slot)
        if self.v2:
            need = b.need_all(np.flatnonzero(self.active_np), self.len_ub)
        else:
            need = max((b.need(r, int(n)) for r, (_, _, n) in self.rows.items()), default=0)
        b.fit(need)

    def _apply_v1(self, logits: torch.Tensor) -> None:
        rows, new = self._v1_new_tokens()
        b = self.batch
        b.fit(max(b.need(r, int(self.rows[r][2])) for r in rows))
        seen = np.zeros(self.slots + 1, dtype=np.int64)
        seen[rows] = [self.rows[r][2] for r in rows]
        groups = b.column_groups(np.asarray(rows), seen)
        for pick, cols in groups:  # one per power-of-two band of the columns rows need
            if pick is None:
                self._append_penalize_v1(logits, rows, new, cols)
            else:
                self._append_penalize_v1(logits, [rows[i] for i in pick], [new[i] for i in pick], cols)

    def _append_penalize_v1(self, logits: torch.Tensor, rows: list[int], new: list[list[int]], cols: slice) -> None:
        b = self.batch
        rounds = max(len(t) for t in new)
        dense = rows[-1] == len(rows) - 1  # rows 0..k-1: slices instead of gathers
        for j in range(rounds):  # 1 per decode step; more only after a multi-token append
            these = [(r, t[j]) for r, t in zip(rows, new, strict=True) if len(t) > j]
            x = torch.tensor([x for _, x in these], dtype=torch.long, device=self.device)
            if dense and len(these) == len(rows):
                b.append_rows(slice(0, len(rows)), x, cols)
            else:
                b.append_rows(torch.tensor([r for r, _ in these], dtype=torch.long, device=self.device), x, cols)
        if dense:
            b.penalize(logits, slice(0, len(rows)), slice(0, len(rows)), cols=cols)
        else:
            idx = torch.tensor(rows, dtype=torch.long, device=self.device)
            b.penalize(logits, idx, idx, cols=cols)

    def _apply_rows_v2(self, logits: torch.Tensor, ctx: Any) -> None:
        b = self.batch
        reqs = ctx.idx_mapping_np
        on = self.active_np[reqs]
        slots_on = reqs[on]
        # Host-side upper bounds of the active requests' lengths (this step's
        # requests only are refreshed; the others keep their last bound).
        # Never lowered while a request lives: a chunked prefill's step bounds
        # only its chunk, while the row holds the whole admitted prompt.
        self.len_ub[slots_on] = np.maximum(self.len_ub[slots_on], ctx.seq_lens_upper_bound_np[on] + self.num_spec)
        b.fit(b.need_all(np.flatnonzero(self.active_np), self.len_ub))
        groups = b.column_groups(slots_on, self.len_ub)
        n_req = len(reqs)
        # Rows per request, where the host can tell: 1, or 1 + num_spec for all.
        per = logits.shape[0] // n_req if logits.shape[0] in (n_req, n_req * (1 + self.num_spec)) else 0
        if on.all() and len(groups) == 1:
            self._v2_pass(logits, ctx, None, groups[0][1])
        elif not per:
            # Some requests have fewer drafts: which rows are whose is known on the device only.
            self._v2_pass(logits, ctx, None, slice(None))
        else:
            # Active rows by band (the columns they need), bands ascending, then
            # rows of requests without the sampler (never touched). The host
            # knows each group's size, so the split needs no sync and no copy.
            slot = ctx.expanded_idx_mapping.long()
            key = torch.where(self.active[slot], b.band[slot], 127)
            order = torch.argsort(key, stable=True)
            start = 0
            for pick, cols in groups:
                n = (len(slots_on) if pick is None else len(pick)) * per
                self._v2_pass(logits, ctx, order[start:start + n], cols)
                start += n

    def _v2_pass(self, logits: torch.Tensor, ctx: Any, rows: torch.Tensor | None, cols: slice) -> None:
        """Commit, draft and penalise the logits rows ``rows`` (None: all) in bank columns ``cols``."""
        b = self.batch
        slot = ctx.expanded_idx_mapping.long()
        total = slot.numel()
        local = ctx.expanded_local_pos.long()
        pos = ctx.pos.long()
        if rows is None:
            row = torch.arange(total, device=slot.device)
        else:
            row, slot, local, pos = rows, slot[rows], local[rows], pos[rows]
        ids = ctx.input_ids.long()
        act = self.active[slot]
        pos0 = pos - local  # position of each request's last committed token
        ids0 = ids[row - local]
        tok, match = b.gather(slot, cols)
        n = b.bank.length[slot]
        history = self.req_states.all_token_ids.gpu
        width = history.shape[1]
        # Commit: tokens at positions n .. pos0 (at most 1 + num_spec per step).
        for j in range(1 + self.num_spec):
            p = n + j
            do = act & (p <= pos0)
            x = torch.where(p == pos0, ids0, history[slot, p.clamp(max=width - 1)].long())
            tok, match = b.append_gathered(tok, match, slot, x, do)
        main = act & (local == 0)
        target = torch.where(main, slot, b.slots)
        b.bank.tok[target, cols] = tok
        b.bank.match[target, cols] = match
        b.bank.length[target] = torch.maximum(n, pos0 + 1)
        # Drafts: row with local position k also sees drafts 1..k, not committed.
        for k in range(1, self.num_spec + 1):
            do = act & (local >= k)
            x = ids[(row - local + k).clamp(max=total - 1)]
            tok, match = b.append_gathered(tok, match, slot, x, do)
        b.penalize(logits, slice(0, total) if rows is None else row, slot, tok, match, act)


class NoRepeatNgramLogitsProcessor(_SuffixProcessor):
    """``no_repeat_ngram_size``: never complete an n-gram already in the context."""

    __vllm_plugin_name__ = "no_repeat_ngram"
    parse = staticmethod(P.parse_ngram)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch = NgramBatch(self.slots, self.device, self.vocab)

    def _slot_tensors(self) -> list[torch.Tensor]:
        b = self.batch
        return [b.cap, b.need_len, b.last_n, b.whitelist.row, b.whitelist.row_np]

    def _entry(self, slot: int, p: P.NgramParams, sampling_params: Any) -> tuple:
        return (slot, p.size, p.window, p.whitelist)


class DryLogitsProcessor(_SuffixProcessor):
    """DRY repetition penalty (``dry_multiplier`` > 0 turns it on)."""

    __vllm_plugin_name__ = "dry"
    parse = staticmethod(P.parse_dry)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The tokenizer is loaded and the vocabulary decoded here, at start;
        # a tokenizer that cannot be loaded is a clear error now, not in a step.
        self.resolver = make_resolver(self.vllm_config)
        self.vocab = max(self.vocab, len(self.resolver.texts))
        self.resolver(P.DEFAULT_DRY_SEQUENCE_BREAKERS)
        self._warned_resolve = False
        self.batch = DryBatch(self.slots, self.device, self.vocab)

    def _slot_tensors(self) -> list[torch.Tensor]:
        b = self.batch
        return [b.cap, b.mult, b.log_base, b.max_exp, b.allowed, b.last_n, b.set_idx, b.set_np]

    def _entry(self, slot: int, p: P.DryParams, sampling_params: Any) -> tuple:
        return (slot, p, self._breakers(p, sampling_params))

    def _breakers(self, p: P.DryParams, sampling_params: Any) -> BreakerSet:
        """The request's breaker set: the default one resolved at start, or the
        table the front end resolved (:mod:`.front_end`), checked here."""
        if p.sequence_breakers == P.DEFAULT_DRY_SEQUENCE_BREAKERS:
            return self.resolver(p.sequence_breakers)
        extra = getattr(sampling_params, "extra_args", None) or {}
        wire = extra.get(WIRE_KEY)
        if wire is not None:
            try:
                return from_wire(wire, p.sequence_breakers, self.vocab,
                                 P.MAX_DRY_SEQUENCE_BREAKERS * (MAX_CHARS - 1))
            except ValueError as exc:
                why = f"its {WIRE_KEY} table is invalid ({exc})"
        else:
            why = "the front end sent no resolved table (is `samplers` left out of VLLM_PLUGINS?)"
        if not self._warned_resolve:
            self._warned_resolve = True
            logger.warning("vllm-plugin-samplers: a request's dry_sequence_breakers are resolved inside the "
                           "engine step because %s; this stalls the step for tens of ms per new set", why)
        return self.resolver(p.sequence_breakers)


class XtcLogitsProcessor(_SamplerProcessor):
    """XTC: with ``xtc_probability`` per step, drop every token at or above
    ``xtc_threshold`` but the least probable of them; a step that would drop
    an end-of-sequence or newline token drops nothing (unless
    ``xtc_eos_newline_guard`` is false); off under greedy decoding unless
    ``xtc_under_greedy``.

    Each request's settings are one column of ``state`` (device) and
    ``state_np`` (host): a step's admissions are one upload. A step's XTC
    rows run in groups of similar ``k`` (:func:`~.xtc.group_keys`), each
    with its own candidates."""

    __vllm_plugin_name__ = "xtc"
    parse = staticmethod(P.parse_xtc)
    needs_tokens = False
    greedy_below = P.GREEDY_BELOW  # off under greedy decoding unless xtc_under_greedy
    #: Rows of ``state``: threshold and probability (float64 bits), seed,
    #: the request's eos_token_id (-1: none), the guard (0 / 1), the
    #: candidates' ``k`` (``top_k_for`` the threshold) and its band.
    TH, PROB, SEED, EOS, GUARD, K, BAND = range(7)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        n = self.slots + 1
        self.state_np = np.zeros((7, n), dtype=np.int64)
        self.state_np[self.TH] = np.ones(n).view(np.int64)
        self.state = torch.from_numpy(self.state_np.copy()).to(self.device)
        self.guard = self._guard_mask()
        self._views()

    def _views(self) -> None:
        s, h = self.state, self.state_np
        self.threshold, self.probability = s[self.TH].view(torch.float64), s[self.PROB].view(torch.float64)
        self.seed, self.eos, self.guard_on, self.k = s[self.SEED], s[self.EOS], s[self.GUARD], s[self.K]
        self.threshold_np, self.probability_np = h[self.TH].view(np.float64), h[self.PROB].view(np.float64)
        self.seed_np, self.guard_np, self.k_np, self.band_np = h[self.SEED], h[self.GUARD], h[self.K], h[self.BAND]

    def _guard_mask(self) -> torch.Tensor:
        """Bool over token ids, built once: every token whose decoded text
        contains a newline, the tokenizer's EOS and the generation config's
        ``eos_token_id`` (one id or a list)."""
        ids: set[int] = set()
        size = self.vocab
        mc = getattr(self.vllm_config, "model_config", None)
        if mc is not None and getattr(mc, "tokenizer", None) is not None:
            try:
                resolver = make_resolver(self.vllm_config)
            except Exception as exc:  # DRY names the tokenizer at start; XTC guards EOS from the request only
                logger.warning("vllm-plugin-samplers: XTC guards only the request's eos_token_id, since the "
                               "tokenizer could not be loaded: %s", exc)
            else:
                ids.update(resolver.newline_ids().tolist())
                ids.update(resolver.eos_token_ids)
                size = max(size, len(resolver.texts))
        try:
            gen = mc.try_get_generation_config() if mc is not None else {}
        except Exception:
            gen = {}
        eos = (gen or {}).get("eos_token_id")
        ids.update([eos] if isinstance(eos, int) else [int(i) for i in eos or ()])
        ids = {i for i in ids if i >= 0}
        size = max(size, max(ids, default=-1) + 1, 1)
        mask = torch.zeros(size, dtype=torch.bool, device=self.device)
        if ids:
            mask[torch.tensor(sorted(ids), dtype=torch.long, device=self.device)] = True
        return mask

    def _params(self, sampling_params: Any) -> Any:
        p = super()._params(sampling_params)
        temperature = getattr(sampling_params, "temperature", None)
        greedy = temperature is not None and float(temperature) < self.greedy_below
        return None if p is None or (greedy and not p.under_greedy) else p

    @staticmethod
    def _k_band(threshold: float) -> tuple[int, int]:
        k = top_k_for(threshold, 2**62)
        return k, int(band_of(np.asarray([k]))[0])

    def _entry(self, slot: int, p: P.XtcParams, sampling_params: Any) -> np.ndarray:
        """Host side of one admission: slot ``slot``'s settings column (also
        written to ``state_np``)."""
        seed = getattr(sampling_params, "seed", None)
        if seed is None:
            seed = int(self._rng.integers(-(2**63), 2**63 - 1))
        seed = (int(seed) + 2**63) % 2**64 - 2**63  # any integer seed, folded into int64
        eos = getattr(sampling_params, "eos_token_id", None)
        eos = int(eos) if isinstance(eos, int) and eos >= 0 else -1
        k, band = self._k_band(p.threshold)
        col = np.asarray([0, 0, seed, eos, int(bool(p.eos_newline_guard)), k, band], dtype=np.int64)
        col[[self.TH, self.PROB]] = np.asarray([p.threshold, p.probability], dtype=np.float64).view(np.int64)
        self.state_np[:, slot] = col
        return col

    def _columns(self, items: list[tuple[int, Any, Any]]) -> tuple[list[int], list[np.ndarray]]:
        """Settings columns of the requests ``(slot, params, sampling params)``
        whose host side succeeds (each failure contained for its request alone)."""
        slots, cols = [], []
        for slot, p, sampling_params in items:
            try:
                cols.append(self._entry(slot, p, sampling_params))
                slots.append(slot)
            except Exception as exc:
                self._contain("admission", exc, [slot])
                self._turn_off([slot])
        return slots, cols

    def _upload(self, slots: list[int], cols: list[np.ndarray]) -> torch.Tensor:
        """Every admitted request's settings in one upload; returns the slots on the device."""
        packed = np.concatenate([np.asarray(slots, dtype=np.int64)[:, None], np.stack(cols)], 1)
        dev = _upload(packed, self.device)
        slot = dev[:, 0]
        self.state.index_copy_(1, slot, dev[:, 1:].T)
        return slot

    def _admit(self, slot: int, p: P.XtcParams, sampling_params: Any, tokens: torch.Tensor | None) -> None:
        self._upload([slot], [self._entry(slot, p, sampling_params)])

    def _admit_added(self, added: dict[int, tuple[Any, Any, Any, Any]]) -> None:
        """V1: every added row's settings in one upload."""
        slots, cols = self._columns([(i, p, sp) for i, (p, sp, _, _) in added.items()])
        if not slots:
            return
        try:
            dev = self._upload(slots, cols)
        except Exception as exc:
            self._contain("admission", exc, slots)
            self._turn_off(slots)
            return
        self._mark_admitted(added, slots, dev)

    def apply_staged_writes(self) -> None:
        """V2: every staged request's settings in one upload."""
        staged = self._staged_or_contained()
        if staged is None:
            return
        slots, cols = self._columns([(slot, p, sp) for slot, (p, sp) in staged])
        if not slots:
            return
        try:
            self.active.index_fill_(0, self._upload(slots, cols), True)
        except Exception as exc:
            self._contain("admission", exc, slots)
            self._turn_off(slots)

    def _add_request(self, req_idx: int, sampling_params: Any) -> bool:
        p = self._params(sampling_params)
        if p is not None:  # settings only: no tokens needed, so no admission step
            self.threshold_np[req_idx] = p.threshold
            self.k_np[req_idx], self.band_np[req_idx] = self._k_band(p.threshold)
        return super()._add_request(req_idx, sampling_params)

    def _move(self, a: int, b: int, swap: bool) -> None:
        for t in (self.state, self.state_np):
            if swap:
                t[:, [a, b]] = t[:, [b, a]]
            else:
                t[:, b] = t[:, a]

    def _guard_args(self, logits: torch.Tensor, slots: torch.Tensor | None) -> tuple[Any, Any, Any]:
        """``xtc_apply``'s guard, eos and guard_on for the rows of ``slots``
        (None: no row has the guard on). The mask is grown once if a logits
        row is longer than the vocabulary known at start."""
        if slots is None:
            return None, None, None
        if self.guard.shape[0] < logits.shape[1]:
            pad = torch.zeros(logits.shape[1] - self.guard.shape[0], dtype=torch.bool, device=self.guard.device)
            self.guard = torch.cat([self.guard, pad])
        return self.guard, self.eos[slots], self.guard_on[slots] != 0

    def _keys(self, slots: np.ndarray, vocab: int) -> np.ndarray:
        """Host: the group keys of request slots ``slots``."""
        return group_keys(self.k_np[slots], self.band_np[slots], vocab)

    def _apply_v1(self, logits: torch.Tensor) -> None:
        vocab = logits.shape[1]
        rows = np.asarray(sorted(self.rows), dtype=np.int64)
        # V1 hands over host lists: the coin is drawn on the host, and only
        # the rows whose coin fired do any work.
        position = np.asarray([len(self.rows[r][1]) for r in rows.tolist()], dtype=np.int64)
        draws = coin(torch.from_numpy(self.seed_np[rows]), torch.from_numpy(position)).numpy()
        rows = rows[draws < self.probability_np[rows]]
        if not rows.size:
            return
        keys = self._keys(rows, vocab)
        groups = group_plan(keys, self.k_np[rows], vocab)
        rows = rows[np.argsort(keys, kind="stable")]  # the groups' rows, in the order of group_plan
        idx = torch.from_numpy(rows).to(self.device)
        act = torch.ones(len(rows), dtype=torch.bool, device=self.device)
        guard = self._guard_args(logits, idx if self.guard_np[rows].any() else None)
        in_order = len(rows) == logits.shape[0] and len(groups) == 1  # every row, 0..R-1
        xtc_apply(logits, self.threshold[idx], act, groups, *guard, rows=None if in_order else idx)

    def _apply_rows_v2(self, logits: torch.Tensor, ctx: Any) -> None:
        vocab = logits.shape[1]
        reqs = ctx.idx_mapping_np
        on = self.active_np[reqs]
        slots_on = reqs[on]
        slot = ctx.expanded_idx_mapping.long()
        n_req = len(reqs)
        per = logits.shape[0] // n_req if logits.shape[0] in (n_req, n_req * (1 + self.num_spec)) else 0
        keys = self._keys(slots_on, vocab)
        groups = group_plan(keys, self.k_np[slots_on], vocab, per)
        if not per:
            # Some requests have fewer drafts: which rows are whose is known on
            # the device only. Every row, with the largest k of the step.
            rows, groups = None, [(logits.shape[0], max(g for _, g in groups))]
        elif on.all() and len(groups) == 1:
            rows = None
        else:
            # The rows of requests with XTC by group (a stable sort on the
            # device: the host knows each group's size), the others last,
            # untouched.
            width = vocab // GROUP
            key = torch.where(4 * self.k[slot] >= width, FULL, self.state[self.BAND][slot])
            key = torch.where(self.active[slot], key, FULL + 1)
            rows = torch.argsort(key, stable=True)[: len(slots_on) * per]
        if rows is not None:
            slot = slot[rows]
        pos = ctx.pos if rows is None else ctx.pos[rows]
        position = pos.long() + 1 - self.req_states.prompt_len.gpu[slot].long()
        act = self.active[slot] & (coin(self.seed[slot], position) < self.probability[slot])
        guard = self._guard_args(logits, slot if self.guard_np[slots_on].any() else None)
        xtc_apply(logits, self.threshold[slot], act, groups, *guard, rows=rows)
