"""The three logits processors vLLM loads from ``vllm.logits_processors``.

Each class serves both of vLLM's model runners through core's compatibility
layer: the V1 runner (CPU builds, all versions) calls ``update_state`` with
batch changes and ``apply(logits)``; the V2 runner (CUDA builds from 0.31)
calls ``add_request`` when a request takes a slot and ``apply(logits, ctx)``. Per-request work lives in small state objects; a batch
without any request that asked for a sampler returns the logits untouched,
so requests that do not ask pay nothing beyond one dictionary check.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import torch

from vllm_plugin_core import compat
from vllm_plugin_samplers import params as P
from vllm_plugin_samplers.dry import DryMatcher, breaker_token_ids
from vllm_plugin_samplers.ngram import NgramIndex
from vllm_plugin_samplers.xtc import should_apply, xtc_mask

logger = logging.getLogger("vllm.plugins.samplers")

__all__ = ["DryLogitsProcessor", "NoRepeatNgramLogitsProcessor", "XtcLogitsProcessor"]


class Context(Sequence[int]):
    """prompt + output as one read-only sequence, without copying (the
    output list is vLLM's live list and grows between steps)."""

    __slots__ = ("output", "prompt")

    def __init__(self, prompt: Sequence[int], output: Sequence[int]) -> None:
        self.prompt = prompt
        self.output = output

    def __len__(self) -> int:
        return len(self.prompt) + len(self.output)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self.tolist()[i]
        n = len(self.prompt)
        if i < 0:
            i += len(self)
        return self.prompt[i] if i < n else self.output[i - n]

    def tail(self, start: int) -> list[int]:
        """Tokens from ``start`` on, copying only that part."""
        n = len(self.prompt)
        if start >= n:
            return list(self.output[start - n:])
        return [*self.prompt[start:], *self.output]

    def tolist(self) -> list[int]:
        return [*self.prompt, *self.output]


class _State:
    """Per-request sampler state; ``apply`` edits one logits row in place."""

    def apply(self, row: torch.Tensor, ctx: Context) -> None:
        raise NotImplementedError


class NgramState(_State):
    """Incremental n-gram index; for n = 1 a boolean mask over the vocabulary."""

    def __init__(self, p: P.NgramParams) -> None:
        self.n = p.size
        self.seen = 0
        self.index = NgramIndex(p.size)
        self.mask: torch.Tensor | None = None

    def apply(self, row: torch.Tensor, ctx: Context) -> None:
        if len(ctx) < self.seen:  # context shrank (preempted and resumed): rebuild
            self.__init__(P.NgramParams(self.n))
        new = ctx.tail(self.seen) if len(ctx) > self.seen else []
        self.seen = len(ctx)
        if self.n == 1:
            if self.mask is None:
                self.mask = torch.zeros(row.shape[-1], dtype=torch.bool, device=row.device)
            if new:
                self.mask[torch.tensor(new, dtype=torch.long, device=row.device)] = True
            row.masked_fill_(self.mask, float("-inf"))
            return
        if new:
            self.index.extend(new)
        banned = self.index.banned()
        if banned:
            row[torch.tensor(list(banned), dtype=torch.long, device=row.device)] = float("-inf")


class DryState(_State):
    """Incremental vectorised DRY matcher (see :class:`~.dry.DryMatcher`)."""

    def __init__(self, p: P.DryParams, breakers: frozenset[int]) -> None:
        self.params = p
        self.breakers = breakers
        self.matcher = DryMatcher(p, breakers)

    def apply(self, row: torch.Tensor, ctx: Context) -> None:
        seen = len(self.matcher)
        if len(ctx) < seen:  # preempted and resumed with a shorter context
            self.matcher = DryMatcher(self.params, self.breakers)
            seen = 0
        if len(ctx) > seen:
            self.matcher.extend(ctx.tail(seen))
        ids, penalties = self.matcher.penalties()
        if ids.numel():
            row.index_put_((ids.to(row.device),), -penalties.to(row.device, row.dtype), accumulate=True)


class XtcState(_State):
    """A per-request generator (seeded from the request's ``seed``)."""

    def __init__(self, p: P.XtcParams, seed: int | None) -> None:
        self.params = p
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def apply(self, row: torch.Tensor, ctx: Context) -> None:
        if should_apply(self.generator, self.params.probability):
            row[xtc_mask(row, self.params.threshold).to(row.device)] = float("-inf")


def xtc_apply_rows(logits: torch.Tensor, rows: list[int], states: list[XtcState]) -> None:
    """XTC for several rows at once: one coin per request, one batched softmax."""
    chosen = [(r, s) for r, s in zip(rows, states, strict=True)
              if should_apply(s.generator, s.params.probability)]
    if not chosen:
        return
    idx = torch.tensor([r for r, _ in chosen], dtype=torch.long, device=logits.device)
    thresholds = torch.tensor([s.params.threshold for _, s in chosen], device=logits.device)
    sub = logits.index_select(0, idx)
    probs = torch.softmax(sub.float(), dim=-1)
    above = probs >= thresholds[:, None]
    enough = above.sum(-1) >= 2
    keep = torch.where(above, probs, torch.full_like(probs, float("inf"))).argmin(-1)
    above[torch.arange(len(chosen), device=logits.device), keep] = False
    above &= enough[:, None]
    logits[idx] = sub.masked_fill(above, float("-inf"))


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str, trust_remote_code: bool, revision: str | None) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)


@functools.lru_cache(maxsize=32)
def _breakers(path: str, trust_remote_code: bool, revision: str | None,
              breakers: tuple[str, ...]) -> frozenset[int]:
    return breaker_token_ids(breakers, _tokenizer(path, trust_remote_code, revision))


class _SamplerProcessor(*compat.logits_processor_bases()):  # type: ignore[misc]
    """Shared plumbing: per-request state keyed by batch row (V1) or slot (V2)."""

    parse = staticmethod(lambda extra_args: None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.v2 = compat.is_v2_logits_init(args, kwargs)
        self.vllm_config = kwargs.get("vllm_config", args[0] if args else None)
        self.req_states = (kwargs.get("req_states", args[1] if len(args) > 1 else None)
                           if self.v2 else None)
        # V1: batch index -> (state, prompt ids, live output ids); V2: slot -> state.
        self.states: dict[int, tuple[_State, Sequence[int], Sequence[int]]] = {}
        self.slot_states: dict[int, _State] = {}

    # ---- shared ----
    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        cls.parse(getattr(sampling_params, "extra_args", None))

    def is_argmax_invariant(self) -> bool:
        return False

    def make_state(self, sampling_params: Any) -> _State | None:
        p = self.parse(getattr(sampling_params, "extra_args", None))
        return None if p is None else self._state(p, sampling_params)

    def _state(self, p: Any, sampling_params: Any) -> _State:
        raise NotImplementedError

    # ---- V1 model runner ----
    def update_state(self, batch_update: Any) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.states.pop(index, None)
        for index, sampling_params, prompt_ids, output_ids in batch_update.added:
            state = self.make_state(sampling_params)
            if state is None:
                self.states.pop(index, None)
            else:
                self.states[index] = (state, prompt_ids or [], output_ids)
        _, direction = compat.batch_update_types()
        for a, b, how in batch_update.moved:
            sa, sb = self.states.pop(a, None), self.states.pop(b, None)
            if sa is not None:
                self.states[b] = sa
            if how == direction.SWAP and sb is not None:
                self.states[a] = sb

    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        if ctx is not None:
            return self._apply_v2(logits, ctx)
        if not self.states:
            return logits
        rows = list(self.states)
        self.apply_rows(logits, rows, [self.states[r][0] for r in rows],
                        [Context(self.states[r][1], self.states[r][2]) for r in rows])
        return logits

    def apply_rows(self, logits: torch.Tensor, rows: list[int], states: list[_State],
                   contexts: list[Context]) -> None:
        """Apply each row's state; subclasses may batch this."""
        for row, state, ctx in zip(rows, states, contexts, strict=True):
            state.apply(logits[row], ctx)

    # ---- V2 model runner ----
    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        state = self.make_state(sampling_params)
        if state is None:
            self.slot_states.pop(req_idx, None)
            return False
        self.slot_states[req_idx] = state
        return True

    def apply_staged_writes(self) -> None:
        pass

    def _apply_v2(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        if not self.slot_states:
            return logits
        rows = ctx.expanded_idx_mapping.tolist()
        wanted = [(r, slot) for r, slot in enumerate(rows) if slot in self.slot_states]
        if not wanted:
            return logits
        slots = torch.tensor([s for _, s in wanted], dtype=torch.long,
                             device=self.req_states.all_token_ids.gpu.device)
        # Tokens visible to each row: the committed tokens up to pos + 1.
        lens = (ctx.pos[[r for r, _ in wanted]] + 1).tolist()
        tokens = self.req_states.all_token_ids.gpu[slots, : max(lens)].tolist()
        self.apply_rows(logits, [r for r, _ in wanted], [self.slot_states[s] for _, s in wanted],
                        [Context(toks[:n], ()) for n, toks in zip(lens, tokens, strict=True)])
        return logits


class NoRepeatNgramLogitsProcessor(_SamplerProcessor):
    """``no_repeat_ngram_size``: never complete an n-gram already in the context."""

    __vllm_plugin_name__ = "no_repeat_ngram"
    parse = staticmethod(P.parse_ngram)

    def _state(self, p: P.NgramParams, sampling_params: Any) -> _State:
        return NgramState(p)


class DryLogitsProcessor(_SamplerProcessor):
    """DRY repetition penalty (``dry_multiplier`` > 0 turns it on)."""

    __vllm_plugin_name__ = "dry"
    parse = staticmethod(P.parse_dry)

    def _state(self, p: P.DryParams, sampling_params: Any) -> _State:
        mc = self.vllm_config.model_config
        breakers = _breakers(str(mc.tokenizer), bool(mc.trust_remote_code),
                             getattr(mc, "tokenizer_revision", None), tuple(p.sequence_breakers))
        return DryState(p, breakers)


class XtcLogitsProcessor(_SamplerProcessor):
    """XTC: with ``xtc_probability`` per step, drop every token at or above
    ``xtc_threshold`` but the least probable of them."""

    __vllm_plugin_name__ = "xtc"
    parse = staticmethod(P.parse_xtc)

    def _state(self, p: P.XtcParams, sampling_params: Any) -> _State:
        return XtcState(p, getattr(sampling_params, "seed", None))

    def apply_rows(self, logits, rows, states, contexts) -> None:  # type: ignore[override]
        xtc_apply_rows(logits, rows, states)  # type: ignore[arg-type]
