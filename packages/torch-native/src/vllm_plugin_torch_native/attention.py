"""The platform's attention backend, in PyTorch operations only.

KV cache of one layer: the ``[num_blocks, num_kv_heads, block_size,
2 * head_size]`` view vLLM allocates (keys in ``[..., :head_size]``, values in
``[..., head_size:]``). Token ``t`` of a request lives in slot
``block_table[req, t // block_size] * block_size + t % block_size``; the model
runner computes ``slot_mapping`` for the new tokens.

* ``do_kv_cache_update``: scatter the new keys/values into their slots
  (``index_put`` on the paged cache; negative slots are padding and skipped).
* ``forward``: decode requests (one query token) in one batched
  ``scaled_dot_product_attention`` over their gathered blocks with a
  key-padding mask; every other request (prefill, chunked prefill, prefill
  after a prefix-cache hit) on its own, causal mask offset by the number of
  tokens already in the cache. Grouped-query attention through
  ``enable_gqa``; a sliding window narrows the mask.
* encoder-only layers (pooling models such as BERT: non-causal, no KV cache):
  one ``scaled_dot_product_attention`` per length group (power-of-two
  bands, as decodes) over the step's own keys/values, padded per row with a
  key-padding mask; never one step-wide n x n mask.

The metadata builder is this module's own (no C++ scheduler metadata): it keeps
the fields of vLLM's ``CommonAttentionMetadata`` the forward needs, plus their
host-side lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)

from vllm_plugin_torch_native import BACKEND_NAME

#: Calls of this module's code in this process (tests check dispatch).
CALLS: dict[str, int] = {"kv_cache_update": 0, "forward": 0, "encoder_forward": 0}
#: Decoder (causal, paged KV cache) and encoder-only (non-causal, no cache) layers.
SUPPORTED_ATTN_TYPES = (AttentionType.DECODER, AttentionType.ENCODER_ONLY)


class UnsupportedAttentionFeature(NotImplementedError):
    """A model asks for an attention feature this backend does not implement."""


class TorchNativeAttentionBackend(AttentionBackend):
    forward_includes_kv_cache_update: bool = False
    accept_output_buffer: bool = True

    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float32, torch.bfloat16]
    supported_kv_cache_dtypes: ClassVar[list[str]] = ["auto", "float32", "bfloat16"]

    @staticmethod
    def get_name() -> str:
        # "TORCH_NATIVE" from vLLM 0.32; "CUSTOM" before (the single slot
        # out-of-tree backends had): vLLM's Attention layer looks the name up
        # in AttentionBackendEnum.
        from vllm_plugin_core.compat import attention_backend_name
        from vllm_plugin_torch_native import BACKEND_PATH

        return attention_backend_name(BACKEND_NAME, BACKEND_PATH)

    @staticmethod
    def get_impl_cls() -> type[TorchNativeAttentionImpl]:
        return TorchNativeAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[TorchNativeMetadataBuilder]:
        return TorchNativeMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(*args: Any, **kwargs: Any) -> list[int | MultipleOf]:
        # 0.31 added a kv_cache_spec argument: accept either form.
        return [MultipleOf(1)]

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return []  # any head size

    @classmethod
    def supported_kv_cache_layouts(cls) -> Any:
        try:
            from vllm.v1.kv_cache_layout import KVCacheLayout
        except ImportError:  # pragma: no cover - layouts predate 0.29 here
            return None
        return (KVCacheLayout.LBHNC,)

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type in SUPPORTED_ATTN_TYPES

    @staticmethod
    def use_cascade_attention(*args: Any, **kwargs: Any) -> bool:
        return False


@dataclass
class TorchNativeMetadata:
    num_actual_tokens: int
    num_reqs: int
    max_query_len: int
    max_seq_len: int
    query_start_loc: torch.Tensor  # [num_reqs + 1]
    seq_lens: torch.Tensor  # [num_reqs]
    block_table: torch.Tensor  # [num_reqs, max_blocks]
    slot_mapping: torch.Tensor  # [num_actual_tokens]
    causal: bool = True
    # host-side copies, computed once per step and shared by every layer
    query_start_loc_list: list[int] | None = None
    seq_lens_list: list[int] | None = None
    decode_reqs: torch.Tensor | None = None  # indices of one-token requests
    prefill_reqs: list[int] | None = None  # the others
    decode_max_len: int = 0  # longest context among the decode requests
    #: decode requests grouped by context length (each group's longest at most
    #: twice its shortest): ``(request indices, longest context)`` per group
    decode_groups: list[tuple[torch.Tensor, int]] | None = None
    # built by the first decoder layer of each (block size, window) (see decode_plan)
    decode_plans: dict[Any, Any] | None = None
    #: prefill requests grouped by (query length, context length) bands:
    #: ``(request indices, longest query, longest context)`` per group
    prefill_groups: list[tuple[torch.Tensor, int, int]] | None = None
    # built by the first decoder layer of each (block size, window) (see prefill_plan)
    prefill_plans: dict[Any, Any] | None = None


class TorchNativeMetadataBuilder(AttentionMetadataBuilder[TorchNativeMetadata]):
    reorder_batch_threshold: int | None = None

    def __init__(self, kv_cache_spec: Any, layer_names: list[str], vllm_config: Any,
                 device: torch.device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> TorchNativeMetadata:
        return metadata_from_common(common_attn_metadata)


def metadata_from_common(cm: Any) -> TorchNativeMetadata:
    """This backend's metadata from vLLM's ``CommonAttentionMetadata`` (duck-typed)."""
    num_reqs = cm.num_reqs
    causal = cm.causal
    if not isinstance(causal, bool):
        raise UnsupportedAttentionFeature(
            "torch_native attention: per-token causality (dynamic causal masks) is not supported"
        )
    if not causal:  # encoder-only layers: the forward needs the device tensors only
        return TorchNativeMetadata(
            num_actual_tokens=cm.num_actual_tokens, num_reqs=num_reqs, max_query_len=cm.max_query_len,
            max_seq_len=cm.max_seq_len, query_start_loc=cm.query_start_loc, seq_lens=cm.seq_lens,
            block_table=cm.block_table_tensor, slot_mapping=cm.slot_mapping, causal=False)
    qsl_cpu = getattr(cm, "query_start_loc_cpu", None)
    if qsl_cpu is None:
        qsl_cpu = cm.query_start_loc
    qsl = qsl_cpu[: num_reqs + 1].tolist()
    seq_lens = cm.seq_lens[:num_reqs].cpu().tolist()
    # vectorised over the requests (no Python loop over rows)
    q_lens = np.diff(np.asarray(qsl, dtype=np.int64))
    decode = np.flatnonzero(q_lens == 1)
    prefill = np.flatnonzero(q_lens > 1).tolist()
    lens = np.asarray(seq_lens, dtype=np.int64)
    return TorchNativeMetadata(
        decode_groups=length_groups(decode, lens[decode]) if decode.size else None,
        num_actual_tokens=cm.num_actual_tokens,
        num_reqs=num_reqs,
        max_query_len=cm.max_query_len,
        max_seq_len=cm.max_seq_len,
        query_start_loc=cm.query_start_loc,
        seq_lens=cm.seq_lens,
        block_table=cm.block_table_tensor,
        slot_mapping=cm.slot_mapping,
        causal=causal,
        query_start_loc_list=qsl,
        seq_lens_list=seq_lens,
        decode_reqs=torch.from_numpy(decode) if decode.size else None,
        decode_max_len=int(np.asarray(seq_lens, dtype=np.int64)[decode].max()) if decode.size else 0,
        prefill_reqs=prefill,
        prefill_groups=prefill_length_groups(np.asarray(prefill, dtype=np.int64), q_lens[prefill],
                                             lens[prefill]) if prefill else None,
    )


def length_groups(index: np.ndarray, lengths: np.ndarray) -> list[tuple[torch.Tensor, int]]:
    """``index`` grouped by ``lengths`` into power-of-two bands, as
    ``(indices, longest length)``: padding each group to its longest costs
    each member at most twice its own length, so the step's work and memory
    grow with the sum of the lengths, not with count x the longest. At most
    ~log2(longest) groups; vectorised (no loop over requests)."""
    band = np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    order = np.argsort(band, kind="stable")
    band, index, lengths = band[order], index[order], lengths[order]
    cuts = np.flatnonzero(np.diff(band)) + 1
    return [(torch.from_numpy(np.ascontiguousarray(i)), int(ln.max()))
            for i, ln in zip(np.split(index, cuts), np.split(lengths, cuts), strict=True)]


def prefill_length_groups(index: np.ndarray, q_lens: np.ndarray, seq_lens: np.ndarray
                          ) -> list[tuple[torch.Tensor, int, int]]:
    """Prefill requests grouped by power-of-two bands of both their query
    length and their context length, as ``(indices, longest query, longest
    context)``: padding each to its group's longest costs each member at most
    about 4x its own query x context work. Vectorised (no loop over requests)."""
    bq = np.ceil(np.log2(np.maximum(q_lens, 1))).astype(np.int64)
    bs = np.ceil(np.log2(np.maximum(seq_lens, 1))).astype(np.int64)
    band = bq * 64 + bs
    order = np.argsort(band, kind="stable")
    band, index, q_lens, seq_lens = band[order], index[order], q_lens[order], seq_lens[order]
    cuts = np.flatnonzero(np.diff(band)) + 1
    return [(torch.from_numpy(np.ascontiguousarray(i)), int(q.max()), int(k.max()))
            for i, q, k in zip(np.split(index, cuts), np.split(q_lens, cuts), np.split(seq_lens, cuts),
                               strict=True)]


def write_kv(kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Scatter ``key``/``value`` ``[T, H_kv, D]`` into the paged cache by slot."""
    n = slot_mapping.shape[0]
    key, value = key[:n], value[:n]
    slots = slot_mapping.long()
    valid = slots >= 0
    if not bool(valid.all()):
        slots, key, value = slots[valid], key[valid], value[valid]
    block_size = kv_cache.shape[2]
    blocks = torch.div(slots, block_size, rounding_mode="floor")
    offsets = slots % block_size
    # advanced indices around a slice: the indexed view is [T, H_kv, 2D]; one
    # scatter writes keys and values together
    kv_cache[blocks, :, offsets] = torch.cat([key, value], dim=-1).to(kv_cache.dtype)


def gather_kv(kv_cache: torch.Tensor, block_ids: torch.Tensor, head_size: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of ``block_ids`` (``[..., nb]``) as ``[..., H_kv, nb * block_size, D]``."""
    # index_select copies whole blocks with memcpy; advanced indexing is ~2x slower here.
    blocks = kv_cache.index_select(0, block_ids.reshape(-1))
    blocks = blocks.view(*block_ids.shape, *kv_cache.shape[1:])  # [..., nb, H, N, 2D]
    lead = blocks.shape[:-4]
    nb, h, bs = blocks.shape[-4], blocks.shape[-3], blocks.shape[-2]
    blocks = blocks.movedim(-3, -4)  # [..., H, nb, N, 2D]
    blocks = blocks.reshape(*lead, h, nb * bs, 2 * head_size)
    return blocks[..., :head_size], blocks[..., head_size:]


def allowed_mask(q_pos: torch.Tensor, k_len: int, sliding_window: int | None) -> torch.Tensor:
    """``[len(q_pos), k_len]`` bool: key ``j`` visible to a query at position ``p``."""
    k_pos = torch.arange(k_len, device=q_pos.device)
    mask = k_pos[None, :] <= q_pos[:, None]
    if sliding_window is not None:
        mask &= (q_pos[:, None] - k_pos[None, :]) < sliding_window
    return mask


class TorchNativeAttentionImpl(AttentionImpl[TorchNativeMetadata]):
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        alibi_slopes: list[float] | None = None,
        sliding_window: int | None = None,
        kv_cache_dtype: str = "auto",
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        sinks: torch.Tensor | None = None,
        **extra: Any,
    ) -> None:
        unsupported = []
        if alibi_slopes is not None:
            unsupported.append("ALiBi")
        if logits_soft_cap:
            unsupported.append(f"logits soft cap ({logits_soft_cap})")
        if sinks is not None:
            unsupported.append("attention sinks")
        if attn_type not in SUPPORTED_ATTN_TYPES:
            unsupported.append(f"attention type {attn_type}")
        elif attn_type == AttentionType.ENCODER_ONLY and sliding_window:
            unsupported.append("sliding window in encoder-only attention")
        if kv_cache_dtype not in ("auto", "float32", "bfloat16"):
            unsupported.append(f"kv_cache_dtype={kv_cache_dtype}")
        if unsupported:
            raise UnsupportedAttentionFeature(
                "the torch_native platform's attention does not support: " + ", ".join(unsupported)
                + ". Unset VLLM_PLUGIN_TORCH_NATIVE to use vLLM's own CPU platform."
            )
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.sliding_window = sliding_window if sliding_window and sliding_window > 0 else None
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.gqa = self.num_kv_heads != self.num_heads

    # -- cache write ---------------------------------------------------------
    def do_kv_cache_update(self, layer: Any, key: torch.Tensor, value: torch.Tensor,
                           kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        CALLS["kv_cache_update"] += 1
        if kv_cache.numel() == 0 or self.attn_type == AttentionType.ENCODER_ONLY:
            return  # encoder-only layers keep no cache
        write_kv(kv_cache, key, value, slot_mapping)

    # -- attention -----------------------------------------------------------
    def forward(self, layer: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: TorchNativeMetadata | None,
                output: torch.Tensor | None = None, output_scale: torch.Tensor | None = None,
                output_block_scale: torch.Tensor | None = None, **extra: Any) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise UnsupportedAttentionFeature("torch_native attention: fused output quantization")
        if output is None:
            output = torch.empty_like(query)
        if attn_metadata is None:  # profiling / warm-up run
            return output
        m = attn_metadata
        if not m.causal:
            CALLS["encoder_forward"] += 1
            self._encoder(query, key, value, m, output)
            return output
        CALLS["forward"] += 1
        if m.decode_reqs is not None:
            self._decode(query, kv_cache, m, output)
        if m.prefill_groups is not None:
            self._prefill(query, kv_cache, m, output)
        return output

    def _prefill(self, query: torch.Tensor, kv_cache: torch.Tensor, m: TorchNativeMetadata,
                 output: torch.Tensor) -> None:
        """Prefill requests (first chunks, later chunks, continuations after a
        prefix-cache hit), one batched attention per (query, context) length
        group (:func:`prefill_plan`). Each row reads only the blocks from the
        first key its window can see; keys no query of the row may see are
        zeroed, so stale or NaN cache slots cannot leak."""
        for tok, valid_q, block_ids, mask, hidden in prefill_plan(m, kv_cache.shape[2], self.sliding_window):
            k, v = gather_kv(kv_cache, block_ids, self.head_size)  # [B, H_kv, nb*N, D]
            k, v = k[:, :, :mask.shape[-1]], v[:, :, :mask.shape[-1]]
            k = k.masked_fill(hidden, 0)
            v = v.masked_fill(hidden, 0)
            q = query[tok].transpose(1, 2)  # [B, H, Lq, D]
            out = F.scaled_dot_product_attention(
                q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=self.scale,
                enable_gqa=self.gqa)  # [B, H, Lq, D]
            output[tok[valid_q]] = out.transpose(1, 2)[valid_q].to(output.dtype)

    def _encoder(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 m: TorchNativeMetadata, output: torch.Tensor) -> None:
        """Non-causal attention of each request over its own tokens of this
        step: requests grouped by length (:func:`length_groups`), each group
        one padded ``scaled_dot_product_attention`` with a key-padding mask,
        so the work is the sum over requests of about their own length squared
        (not the step's token count squared)."""
        qsl = m.query_start_loc[:m.num_reqs + 1].long()
        starts, q_lens = qsl[:-1], qsl[1:] - qsl[:-1]
        lens_np = q_lens.numpy() if q_lens.device.type == "cpu" else q_lens.cpu().numpy()
        for reqs, longest in length_groups(np.arange(m.num_reqs), lens_np):
            if longest == 0:
                continue
            offs = torch.arange(longest, device=query.device)
            valid = offs[None, :] < q_lens[reqs][:, None]  # [B, L]
            tok = (starts[reqs][:, None] + offs[None, :]).masked_fill(~valid, 0)  # [B, L]
            q = query[tok].transpose(1, 2)  # [B, H, L, D]
            k = key[tok].transpose(1, 2).to(q.dtype)
            v = value[tok].transpose(1, 2).to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :],
                                                 scale=self.scale, enable_gqa=self.gqa)
            output[tok[valid]] = out.transpose(1, 2)[valid].to(output.dtype)

    def _decode(self, query: torch.Tensor, kv_cache: torch.Tensor, m: TorchNativeMetadata,
                output: torch.Tensor) -> None:
        """Decode requests, one batched attention per length group
        (:func:`decode_plan`): each row padded to at most twice its own
        context. Keys and values a row may not see (past its length, outside
        its window) are zeroed, so stale or NaN cache slots cannot leak."""
        for rows, block_ids, span, mask in decode_plan(m, kv_cache.shape[2], self.sliding_window):
            k, v = gather_kv(kv_cache, block_ids, self.head_size)  # [B, H_kv, nb*N, D]
            k, v = k[:, :, :span], v[:, :, :span]
            hidden = ~mask.view(mask.shape[0], 1, span, 1)
            k = k.masked_fill(hidden, 0)
            v = v.masked_fill(hidden, 0)
            q = query.index_select(0, rows).unsqueeze(2)  # [B, H, 1, D]
            out = F.scaled_dot_product_attention(
                q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=self.scale,
                enable_gqa=self.gqa)  # [B, H, 1, D]
            output.index_copy_(0, rows, out.squeeze(2).to(output.dtype))


def decode_plan(m: TorchNativeMetadata, block_size: int, window: int | None = None
                ) -> list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]]:
    """``(rows, block_ids, span, mask)`` per length group of the step's decode
    requests: query rows ``[B]``, block ids ``[B, nb]`` from each row's first
    visible block, the keys read per row and the mask ``[B, 1, 1, span]``
    (past the row's length or outside its window: False).

    Without a window the groups are the metadata's (by context length); with
    one, rows are grouped by the keys they read (at most the window plus a
    block), so a windowed layer's work does not grow with the context. Built
    at the first layer of each (block size, window) and kept on the metadata,
    so each layer runs only the gather, the attention and the write-back.
    """
    key = (block_size, window)
    plans = m.decode_plans if m.decode_plans is not None else {}
    m.decode_plans = plans
    if key in plans:
        return plans[key]
    assert m.decode_reqs is not None
    reqs_np = m.decode_reqs.numpy()
    seq_h = np.asarray(m.seq_lens_list, dtype=np.int64)[reqs_np]
    if window is None:
        groups = m.decode_groups or [(m.decode_reqs, m.decode_max_len)]
    else:
        base_h = np.maximum(seq_h - window, 0) // block_size * block_size
        groups = length_groups(reqs_np, seq_h - base_h)
    parts = []
    for reqs, span in groups:
        dev = m.query_start_loc.device
        rows = m.query_start_loc[:m.num_reqs].index_select(0, reqs.to(dev)).long()  # [B] query row of each
        lens = m.seq_lens[:m.num_reqs].index_select(0, reqs.to(dev)).long()  # [B]
        base = (torch.zeros_like(lens) if window is None
                else (lens - window).clamp(min=0) // block_size * block_size)
        nb = (span + block_size - 1) // block_size
        table = m.block_table.index_select(0, reqs.to(m.block_table.device)).long()
        col = (base // block_size)[:, None] + torch.arange(nb, device=dev)[None, :]
        block_ids = table.gather(1, col.clamp(max=table.shape[1] - 1))  # [B, nb]
        k_pos = base[:, None] + torch.arange(span, device=dev)[None, :]  # [B, span] absolute
        visible = k_pos < lens[:, None]
        if window is not None:
            visible &= (lens[:, None] - 1 - k_pos) < window
        parts.append((rows, block_ids, span, visible[:, None, None, :]))
    plans[key] = parts
    return parts


def prefill_plan(m: TorchNativeMetadata, block_size: int, window: int | None
                 ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(tok, valid_q, block_ids, mask, hidden)`` per prefill length group:
    query token index ``[B, Lq]`` (padding at 0) and its validity, the block
    ids ``[B, nb]`` from each row's first visible block, the attention mask
    ``[B, 1, Lq, Lk]`` (causal, window, context length; a padding query row
    sees key 0 only, so no row is fully masked) and the keys no query of the
    row sees ``[B, 1, Lk, 1]``. Built once per (block size, window) and kept
    on the metadata for the step's other layers."""
    key = (block_size, window)
    plans = m.prefill_plans if m.prefill_plans is not None else {}
    m.prefill_plans = plans
    if key in plans:
        return plans[key]
    assert m.prefill_groups is not None
    qsl = m.query_start_loc[:m.num_reqs + 1].long()
    seq = m.seq_lens[:m.num_reqs].long()
    qsl_h = np.asarray(m.query_start_loc_list, dtype=np.int64)
    seq_h = np.asarray(m.seq_lens_list, dtype=np.int64)
    parts = []
    for reqs, lq, _ in m.prefill_groups:
        r = reqs.numpy()
        ctx_h = seq_h[r] - (qsl_h[r + 1] - qsl_h[r])
        lo_h = np.maximum(ctx_h - window + 1, 0) if window is not None else np.zeros_like(ctx_h)
        base_h = lo_h // block_size * block_size  # first key position each row reads
        span = int((seq_h[r] - base_h).max())  # keys read by the widest row
        nb = (span + block_size - 1) // block_size
        dev = qsl.device
        starts = qsl.index_select(0, reqs.to(dev))
        q_lens = qsl.index_select(0, reqs.to(dev) + 1) - starts
        s_lens = seq.index_select(0, reqs.to(dev))
        ctx = s_lens - q_lens
        base = torch.from_numpy(base_h).to(dev)
        lo = torch.from_numpy(lo_h).to(dev)
        offs_q = torch.arange(lq, device=dev)
        valid_q = offs_q[None, :] < q_lens[:, None]  # [B, Lq]
        tok = (starts[:, None] + offs_q[None, :]).masked_fill(~valid_q, 0)
        table = m.block_table.index_select(0, reqs.to(m.block_table.device)).long()
        col = (base // block_size)[:, None] + torch.arange(nb, device=dev)[None, :]
        block_ids = table.gather(1, col.clamp(max=table.shape[1] - 1))  # [B, nb]
        k_pos = base[:, None] + torch.arange(span, device=dev)[None, :]  # [B, Lk] absolute
        q_pos = ctx[:, None] + offs_q[None, :]  # [B, Lq] absolute
        visible_k = (k_pos < s_lens[:, None]) & (k_pos >= lo[:, None])  # [B, Lk]
        mask = (k_pos[:, None, :] <= q_pos[:, :, None]) & visible_k[:, None, :]
        if window is not None:
            mask &= (q_pos[:, :, None] - k_pos[:, None, :]) < window
        mask &= valid_q[:, :, None]
        mask[:, :, 0] |= ~valid_q  # padding rows: one key, output discarded
        parts.append((tok, valid_q, block_ids, mask[:, None], ~visible_k[:, None, :, None]))
    plans[key] = parts
    return parts
