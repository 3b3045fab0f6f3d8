"""The attention backend against dense reference attention (no engine).

Paged write by slot mapping over scattered blocks, prefill, chunked prefill and
prefix-cache continuation (causal mask offset by the cached context), batched
decode, grouped-query attention, sliding window.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_cpu_ops import _LargestTensor, _PeakLiveBytes  # (the memory probes, shared)

from vllm_plugin_torch_native import BACKEND_PATH
from vllm_plugin_torch_native.attention import (
    TorchNativeAttentionBackend,
    TorchNativeAttentionImpl,
    UnsupportedAttentionFeature,
    metadata_from_common,
)

BLOCK = 4


def dense_reference(q, k, v, q_pos, scale, window):
    """q [Tq, H, D]; k, v [S, Hkv, D]: causal (and windowed) attention, float64."""
    h, hkv = q.shape[1], k.shape[1]
    k = k.repeat_interleave(h // hkv, dim=1).double()
    v = v.repeat_interleave(h // hkv, dim=1).double()
    scores = torch.einsum("thd,shd->hts", q.double(), k) * scale
    s_pos = torch.arange(k.shape[0])
    allowed = s_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed &= (q_pos[:, None] - s_pos[None, :]) < window
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("hts,shd->thd", scores.softmax(-1), v)


def run_step(impl, kv_cache, block_table, reqs, heads, hkv, d, g):
    """reqs: list of (context_len, new_len, full_k, full_v); returns (out, queries)."""
    queries, keys, values, slots, qsl, seq_lens = [], [], [], [], [0], []
    for i, (ctx, new, fk, fv) in enumerate(reqs):
        queries.append(torch.randn(new, heads, d, generator=g))
        keys.append(fk[ctx:ctx + new])
        values.append(fv[ctx:ctx + new])
        for pos in range(ctx, ctx + new):
            slots.append(int(block_table[i, pos // BLOCK]) * BLOCK + pos % BLOCK)
        qsl.append(qsl[-1] + new)
        seq_lens.append(ctx + new)
    q, k, v = torch.cat(queries), torch.cat(keys), torch.cat(values)
    # one padding token (slot -1) at the end, as the runner may add
    q = torch.cat([q, torch.zeros(1, heads, d)])
    k = torch.cat([k, torch.zeros(1, hkv, d)])
    v = torch.cat([v, torch.zeros(1, hkv, d)])
    slot_mapping = torch.tensor([*slots, -1])
    cm = SimpleNamespace(
        num_reqs=len(reqs), num_actual_tokens=len(slots), max_query_len=max(r[1] for r in reqs),
        max_seq_len=max(seq_lens), query_start_loc=torch.tensor(qsl, dtype=torch.int32),
        query_start_loc_cpu=torch.tensor(qsl, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32), block_table_tensor=block_table[: len(reqs)],
        slot_mapping=slot_mapping, causal=True)
    meta = metadata_from_common(cm)
    impl.do_kv_cache_update(None, k, v, kv_cache, slot_mapping)
    out = torch.zeros_like(q)
    impl.forward(None, q, k, v, kv_cache, meta, output=out)
    return out, queries, qsl


@pytest.mark.parametrize(("heads", "hkv", "window"), [(4, 4, None), (4, 2, None), (4, 1, 5), (2, 2, 3)])
def test_matches_dense_reference(heads, hkv, window):
    g = torch.Generator().manual_seed(0)
    d = 16
    scale = 1 / math.sqrt(d)
    impl = TorchNativeAttentionImpl(heads, d, scale, hkv, None, window, "auto")
    num_blocks = 40
    kv_cache = torch.zeros(num_blocks, hkv, BLOCK, 2 * d)
    lens = [13, 1, 7, 22]  # final lengths of four requests
    perm = torch.randperm(num_blocks, generator=g)  # scattered, non-contiguous blocks
    block_table = torch.stack([perm[i * 8:(i + 1) * 8] for i in range(4)]).int()
    full = [(torch.randn(n, hkv, d, generator=g), torch.randn(n, hkv, d, generator=g)) for n in lens]

    # step 1: prefills of different lengths (request 3 only its first chunk: chunked prefill)
    step1 = [(0, 10, *full[0]), (0, 1, *full[1]), (0, 7, *full[2]), (0, 9, *full[3])]
    # step 2: continuation after cached context (prefix hit / next chunk) and decodes
    step2 = [(10, 3, *full[0]), (9, 13, *full[3])]
    step3 = [(12, 1, *full[0]), (21, 1, *full[3])]  # batched decode
    for reqs, rows in ((step1, [0, 1, 2, 3]), (step2, [0, 3]), (step3, [0, 3])):
        bt = block_table[rows]
        out, queries, qsl = run_step(impl, kv_cache, bt, reqs, heads, hkv, d, g)
        for j, (ctx, new, fk, fv) in enumerate(reqs):
            q_pos = torch.arange(ctx, ctx + new)
            ref = dense_reference(queries[j], fk[: ctx + new], fv[: ctx + new], q_pos, scale, window)
            got = out[qsl[j]:qsl[j + 1]]
            torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_cache_write_by_slot():
    kv = torch.zeros(3, 2, BLOCK, 2 * 8)
    k = torch.randn(2, 2, 8)
    v = torch.randn(2, 2, 8)
    TorchNativeAttentionImpl(2, 8, 1.0, 2, None, None, "auto").do_kv_cache_update(
        None, k, v, kv, torch.tensor([2 * BLOCK + 1, 5]))
    torch.testing.assert_close(kv[2, :, 1, :8], k[0])
    torch.testing.assert_close(kv[2, :, 1, 8:], v[0])
    torch.testing.assert_close(kv[1, :, 1, :8], k[1])
    assert kv[0].abs().sum() == 0


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"alibi_slopes": [1.0]}, "ALiBi"),
    ({"logits_soft_cap": 30.0}, "logits soft cap"),
    ({"kv_cache_dtype": "fp8"}, "kv_cache_dtype=fp8"),
    ({"attn_type": "decoder_encoder"}, "attention type"),
    ({"attn_type": "encoder_only", "sliding_window": 8}, "sliding window in encoder-only"),
])
def test_unsupported_features_fail_at_construction(kwargs, says):
    with pytest.raises(UnsupportedAttentionFeature, match=says):
        TorchNativeAttentionImpl(2, 8, 1.0, 2, **kwargs)


@pytest.mark.parametrize(("heads", "hkv"), [(4, 4), (4, 2)])
def test_encoder_only_matches_dense_bidirectional(heads, hkv):
    """Pooling models: each request attends to all its tokens (no mask, no cache),
    never to another request's; one padding token after the last request."""
    g = torch.Generator().manual_seed(3)
    d, lens = 8, [5, 1, 7]
    n = sum(lens)
    q, k, v = (torch.randn(n + 1, h, d, generator=g) for h in (heads, hkv, hkv))
    qsl = torch.tensor([0, 5, 6, 13], dtype=torch.int32)
    cm = SimpleNamespace(num_reqs=3, num_actual_tokens=n, max_query_len=7, max_seq_len=7,
                         query_start_loc=qsl, seq_lens=torch.tensor(lens), causal=False,
                         block_table_tensor=torch.zeros(3, 1, dtype=torch.int32),
                         slot_mapping=torch.full((n + 1,), -1))
    m = metadata_from_common(cm)
    impl = TorchNativeAttentionImpl(heads, d, 0.3, hkv, attn_type="encoder_only")
    out = impl.forward(None, q, k, v, torch.empty(0), m, output=torch.zeros(n + 1, heads, d))
    for a, b in zip(qsl[:-1].tolist(), qsl[1:].tolist(), strict=True):
        kr = k[a:b].repeat_interleave(heads // hkv, dim=1).double()
        vr = v[a:b].repeat_interleave(heads // hkv, dim=1).double()
        ref = torch.einsum("hts,shd->thd", (torch.einsum("thd,shd->hts", q[a:b].double(), kr) * 0.3)
                           .softmax(-1), vr)
        torch.testing.assert_close(out[a:b].double(), ref, atol=1e-5, rtol=1e-5)
    assert out[n].abs().sum() == 0
    kv = torch.zeros(2, hkv, BLOCK, 2 * d)
    impl.do_kv_cache_update(None, k, v, kv, torch.arange(n + 1))  # no cache for encoder layers
    assert kv.abs().sum() == 0


def test_backend_declarations():
    b = TorchNativeAttentionBackend
    from vllm.v1.attention.backends import registry

    assert b.get_name() in ("TORCH_NATIVE", "CUSTOM")  # CUSTOM slot before vLLM 0.32
    assert registry.AttentionBackendEnum[b.get_name()].get_path() == BACKEND_PATH
    assert b.get_impl_cls() is TorchNativeAttentionImpl
    assert b.supports_dtype(torch.float32) and b.supports_dtype(torch.bfloat16)
    assert not b.supports_dtype(torch.float16)
    assert b.supports_sliding_window()
    assert b.supports_attn_type("decoder") and b.supports_attn_type("encoder_only")
    assert not b.supports_attn_type("encoder_decoder")
    assert b.forward_includes_kv_cache_update is False
    # 0.31 added a kv_cache_spec argument; MultipleOf has no __eq__ before 0.32
    for sizes in (b.get_supported_kernel_block_sizes(), b.get_supported_kernel_block_sizes(kv_cache_spec=None)):
        assert [s.base for s in sizes] == [1]


@pytest.mark.parametrize("window", [None, 6])
def test_decodes_of_unequal_lengths_match_reference_and_nan_in_unused_slots_cannot_leak(window):
    """Decodes of contexts 2 to 57 in one step (several length groups), in a
    cache whose every unwritten slot holds NaN: equal to dense attention,
    and finite."""
    g = torch.Generator().manual_seed(1)
    heads, hkv, d = 4, 2, 8
    impl = TorchNativeAttentionImpl(heads, d, 1 / math.sqrt(d), hkv, None, window, "auto")
    lens = [2, 57, 5, 9, 3, 33, 17, 4]
    nbs = [(n + BLOCK - 1) // BLOCK for n in lens]
    kv_cache = torch.full((sum(nbs) + 3, hkv, BLOCK, 2 * d), float("nan"))
    perm = torch.randperm(kv_cache.shape[0], generator=g)
    width = max(nbs)
    block_table = torch.zeros(len(lens), width, dtype=torch.int32)
    at = 0
    for i, nb in enumerate(nbs):
        block_table[i, :nb] = perm[at:at + nb]
        at += nb
    full = [(torch.randn(n, hkv, d, generator=g), torch.randn(n, hkv, d, generator=g)) for n in lens]
    # the prompts (all but the last token), then one decode step for every request
    run_step(impl, kv_cache, block_table, [(0, n - 1, *full[i]) for i, n in enumerate(lens)], heads, hkv, d, g)
    out, queries, qsl = run_step(impl, kv_cache, block_table, [(n - 1, 1, *full[i]) for i, n in enumerate(lens)],
                                 heads, hkv, d, g)
    assert torch.isfinite(out).all()
    for j, n in enumerate(lens):
        ref = dense_reference(queries[j], full[j][0], full[j][1], torch.tensor([n - 1]), impl.scale, window)
        torch.testing.assert_close(out[qsl[j]:qsl[j + 1]].double(), ref, atol=1e-5, rtol=1e-5)


def _decode_step(lens: list[int], probe_cls: type, heads: int = 2, hkv: int = 2, d: int = 8) -> Any:
    """One decode of each request (contexts ``lens``) over contiguous blocks, in a
    block table wider than any row needs, the metadata built and the forward
    run inside ``probe_cls`` (a memory probe); returns the probe."""
    from vllm_plugin_torch_native.attention import TorchNativeMetadata

    impl = TorchNativeAttentionImpl(heads, d, 1 / math.sqrt(d), hkv, None, None, "auto")
    nbs = [(n + BLOCK - 1) // BLOCK for n in lens]
    kv_cache = torch.randn(sum(nbs), hkv, BLOCK, 2 * d)
    block_table = torch.zeros(len(lens), max(nbs) + 3, dtype=torch.int32)
    at = 0
    for i, nb in enumerate(nbs):
        block_table[i, :nb] = torch.arange(at, at + nb)
        at += nb
    n = len(lens)
    qsl = torch.arange(n + 1, dtype=torch.int32)
    cm = SimpleNamespace(num_reqs=n, num_actual_tokens=n, max_query_len=1, max_seq_len=max(lens),
                         query_start_loc=qsl, query_start_loc_cpu=qsl,
                         seq_lens=torch.tensor(lens, dtype=torch.int32), block_table_tensor=block_table,
                         slot_mapping=torch.full((n,), -1), causal=True)
    q = torch.randn(n, heads, d)
    out = torch.zeros_like(q)
    with probe_cls() as probe:
        meta: TorchNativeMetadata = metadata_from_common(cm)
        impl.forward(None, q, q[:, :hkv], q[:, :hkv], kv_cache, meta, output=out)
        del meta
    assert torch.isfinite(out).all()
    return probe


def test_decode_memory_grows_with_the_sum_of_contexts_not_count_times_longest():
    """64 decodes of 8 tokens beside one of 1024: no tensor of the step is
    larger than about the long request's own keys and values, where padding
    every row to the longest would make 65 x 1024 rows."""
    hkv, d = 2, 8
    lens = [8] * 64 + [1024]
    probe = _decode_step(lens, _LargestTensor, hkv=hkv, d=d)
    one_long = 1024 * hkv * 2 * d  # the long request's gathered keys and values
    assert probe.largest <= one_long, probe.largest
    assert probe.largest < len(lens) * 1024 * hkv * d  # what padding to the longest made


def test_encoder_requests_of_unequal_lengths_attend_only_to_themselves():
    """Encoder-only attention over requests of 1 to 40 tokens (several length
    groups): each equals dense bidirectional attention over its own tokens."""
    g = torch.Generator().manual_seed(2)
    heads, hkv, d = 4, 2, 8
    impl = TorchNativeAttentionImpl(heads, d, 1 / math.sqrt(d), hkv, None, None, "auto",
                                    attn_type="encoder_only")
    lens = [5, 1, 40, 3, 17, 9]
    qsl = [0]
    for n in lens:
        qsl.append(qsl[-1] + n)
    total = qsl[-1]
    q, k, v = (torch.randn(total, h, d, generator=g) for h in (heads, hkv, hkv))
    cm = SimpleNamespace(num_reqs=len(lens), num_actual_tokens=total, max_query_len=max(lens),
                         max_seq_len=max(lens), query_start_loc=torch.tensor(qsl, dtype=torch.int32),
                         seq_lens=torch.tensor(lens, dtype=torch.int32), block_table_tensor=None,
                         slot_mapping=None, causal=False)
    out = torch.zeros_like(q)
    impl.forward(None, q, k, v, torch.empty(0), metadata_from_common(cm), output=out)
    for j in range(len(lens)):
        a, b = qsl[j], qsl[j + 1]
        kk = k[a:b].repeat_interleave(heads // hkv, dim=1).double()
        vv = v[a:b].repeat_interleave(heads // hkv, dim=1).double()
        scores = torch.einsum("thd,shd->hts", q[a:b].double(), kk) * impl.scale
        ref = torch.einsum("hts,shd->thd", scores.softmax(-1), vv)
        torch.testing.assert_close(out[a:b].double(), ref, atol=1e-5, rtol=1e-5)


def _decode_peak(lens: list[int]) -> int:
    """Peak live bytes the attention step allocates for one decode of each request."""
    return _decode_step(lens, _PeakLiveBytes).peak


def test_decode_peak_memory_grows_with_the_sum_of_contexts():
    """Peak bytes of a decode step (metadata and attention together): 64 short
    requests beside one long one add about their own size to the long one's
    step alone, not 64 x the longest; and the step's peak grows linearly with
    the long context (2x context: about 2x bytes)."""
    hkv, d = 2, 8
    kv_per_token = hkv * 2 * d * 4  # keys and values, float32
    long_alone = _decode_peak([1024])
    mixed = _decode_peak([8] * 64 + [1024])
    shorts = 64 * 8 * kv_per_token
    padded = 65 * 1024 * kv_per_token  # padding every row to the longest
    assert mixed <= long_alone + 4 * shorts, (mixed, long_alone, shorts)
    assert mixed < padded / 8, (mixed, padded)
    longer = _decode_peak([8] * 64 + [2048])
    assert longer <= 2.2 * mixed, (longer, mixed)



@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("window", [None, 4, 17])
def test_batched_prefills_of_unequal_lengths_match_reference_with_nan_in_unused_slots(seed, window):
    """Twelve prefills in one step (first chunks, later chunks after a cached
    context, one-token-longer and long ones), scattered blocks and a cache
    whose unused slots hold NaN: each equals dense attention over its own
    keys, and a fixed number of attention calls runs (one per length group,
    not one per request)."""
    from vllm_plugin_torch_native.attention import CALLS

    g = torch.Generator().manual_seed(seed)
    heads, hkv, d = 4, 2, 8
    impl = TorchNativeAttentionImpl(heads, d, 1 / math.sqrt(d), hkv, None, window, "auto")
    n = 12
    ctx = torch.randint(0, 60, (n,), generator=g).tolist()
    new = torch.randint(2, 21, (n,), generator=g).tolist()
    total = [c + k for c, k in zip(ctx, new, strict=True)]
    nbs = [(t + BLOCK - 1) // BLOCK for t in total]
    kv_cache = torch.full((sum(nbs) + 5, hkv, BLOCK, 2 * d), float("nan"))
    perm = torch.randperm(kv_cache.shape[0], generator=g)
    block_table = torch.zeros(n, max(nbs) + 2, dtype=torch.int32)
    at = 0
    for i, nb in enumerate(nbs):
        block_table[i, :nb] = perm[at:at + nb]
        at += nb
    full = [(torch.randn(t, hkv, d, generator=g), torch.randn(t, hkv, d, generator=g)) for t in total]
    with_ctx = [i for i in range(n) if ctx[i] > 1]
    run_step(impl, kv_cache, block_table[with_ctx], [(0, ctx[i], *full[i]) for i in with_ctx],
             heads, hkv, d, g)  # the cached contexts (prefills themselves)
    rows = [i for i in range(n) if ctx[i] != 1]  # a 1-token context is not a prefill step here
    reqs = [(ctx[i] if ctx[i] > 1 else 0, new[i] + (ctx[i] if ctx[i] == 1 else 0), *full[i]) for i in rows]
    sdpa = []
    real = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda *a, **k: sdpa.append(1) or real(*a, **k)
    try:
        before = CALLS["forward"]
        out, queries, qsl = run_step(impl, kv_cache, block_table[rows], reqs, heads, hkv, d, g)
    finally:
        F.scaled_dot_product_attention = real
    assert CALLS["forward"] == before + 1
    assert torch.isfinite(out).all()
    for j, (c, k_new, fk, fv) in enumerate(reqs):
        q_pos = torch.arange(c, c + k_new)
        ref = dense_reference(queries[j], fk[:c + k_new], fv[:c + k_new], q_pos, impl.scale, window)
        torch.testing.assert_close(out[qsl[j]:qsl[j + 1]].double(), ref, atol=1e-5, rtol=1e-5)
    # one call per (query band x context band) group, fewer than the requests (one each before)
    assert len(sdpa) < len(rows), (len(sdpa), len(rows))


def test_a_windowed_prefill_reads_only_the_blocks_its_window_sees():
    """A 4-token chunk after 4000 cached tokens with a window of 8: no tensor
    of the step is near the size of the whole context's keys."""
    from vllm_plugin_torch_native.attention import TorchNativeMetadata

    heads = hkv = 2
    d, window, ctx, q_len = 8, 8, 4000, 4
    impl = TorchNativeAttentionImpl(heads, d, 1 / math.sqrt(d), hkv, None, window, "auto")
    total = ctx + q_len
    nb = (total + BLOCK - 1) // BLOCK
    kv_cache = torch.randn(nb, hkv, BLOCK, 2 * d)
    block_table = torch.arange(nb, dtype=torch.int32)[None, :]
    qsl = torch.tensor([0, q_len], dtype=torch.int32)
    cm = SimpleNamespace(num_reqs=1, num_actual_tokens=q_len, max_query_len=q_len, max_seq_len=total,
                         query_start_loc=qsl, query_start_loc_cpu=qsl,
                         seq_lens=torch.tensor([total], dtype=torch.int32), block_table_tensor=block_table,
                         slot_mapping=torch.full((q_len,), -1), causal=True)
    meta: TorchNativeMetadata = metadata_from_common(cm)
    q = torch.randn(q_len, heads, d)
    out = torch.zeros_like(q)
    with _LargestTensor() as probe:
        impl.forward(None, q, q[:, :hkv], q[:, :hkv], kv_cache, meta, output=out)
    assert probe.largest <= 4 * (window + q_len + 2 * BLOCK) * hkv * 2 * d, probe.largest
    k_all = kv_cache[..., :d].permute(1, 0, 2, 3).reshape(hkv, -1, d)[:, :total].transpose(0, 1)
    v_all = kv_cache[..., d:].permute(1, 0, 2, 3).reshape(hkv, -1, d)[:, :total].transpose(0, 1)
    ref = dense_reference(q, k_all, v_all, torch.arange(ctx, total), impl.scale, window)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_windowed_decodes_read_only_the_blocks_their_window_sees():
    """Decodes after 4000, 1000 and 9 tokens with a window of 8: no tensor of
    the step grows with the contexts, and each row equals dense attention."""
    from vllm_plugin_torch_native.attention import TorchNativeMetadata

    heads, hkv, d, window = 4, 2, 8, 8
    impl = TorchNativeAttentionImpl(heads, d, 1 / math.sqrt(d), hkv, None, window, "auto")
    lens = [4000, 1000, 9]
    nbs = [(n + BLOCK - 1) // BLOCK for n in lens]
    g = torch.Generator().manual_seed(5)
    kv_cache = torch.randn(sum(nbs), hkv, BLOCK, 2 * d, generator=g)
    block_table = torch.zeros(len(lens), max(nbs), dtype=torch.int32)
    at = 0
    for i, nb in enumerate(nbs):
        block_table[i, :nb] = torch.arange(at, at + nb)
        at += nb
    n = len(lens)
    qsl = torch.arange(n + 1, dtype=torch.int32)
    cm = SimpleNamespace(num_reqs=n, num_actual_tokens=n, max_query_len=1, max_seq_len=max(lens),
                         query_start_loc=qsl, query_start_loc_cpu=qsl,
                         seq_lens=torch.tensor(lens, dtype=torch.int32), block_table_tensor=block_table,
                         slot_mapping=torch.full((n,), -1), causal=True)
    meta: TorchNativeMetadata = metadata_from_common(cm)
    q = torch.randn(n, heads, d, generator=g)
    out = torch.zeros_like(q)
    with _LargestTensor() as probe:
        impl.forward(None, q, q[:, :hkv], q[:, :hkv], kv_cache, meta, output=out)
    assert probe.largest <= 4 * n * (window + 2 * BLOCK) * hkv * 2 * d, probe.largest
    for i, length in enumerate(lens):
        blocks = kv_cache[block_table[i, :nbs[i]].long()]  # [nb, H_kv, N, 2D]
        kv = blocks.permute(1, 0, 2, 3).reshape(hkv, -1, 2 * d)[:, :length].transpose(0, 1)
        ref = dense_reference(q[i:i + 1], kv[..., :d], kv[..., d:], torch.tensor([length - 1]), impl.scale,
                              window)
        torch.testing.assert_close(out[i:i + 1].double(), ref, atol=1e-5, rtol=1e-5)
