"""The platform's own custom ops, in plain PyTorch.

Each class subclasses vLLM's layer and implements ``forward_oot``; registered
with ``CustomOp.register_oot`` (under the upstream class name, which is what
``CustomOp.__new__`` looks up), vLLM instantiates it wherever a model builds
the upstream layer, and on an out-of-tree platform dispatches ``forward`` to
``forward_oot``.

:data:`CALLS` counts the calls per op in this process, so tests can check that
dispatch reaches these implementations.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from vllm.model_executor.custom_op import CustomOp, op_registry_oot
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

#: Calls per op name in this process (``rms_norm``, ``fused_add_rms_norm``,
#: ``silu_and_mul``, ``rotary_embedding``).
CALLS: Counter[str] = Counter()


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float,
             variance_size: int | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight``, statistics in float32."""
    orig_dtype = out_dtype or x.dtype
    xf = x.float()
    xv = xf if variance_size is None else xf[..., :variance_size]
    variance = xv.pow(2).mean(dim=-1, keepdim=True)
    out = (xf * torch.rsqrt(variance + eps)).to(orig_dtype)
    if weight is not None:
        out = (out * weight).to(orig_dtype)  # a float32 weight keeps a bfloat16 activation bfloat16
    return out


class TorchNativeRMSNorm(RMSNorm):
    """RMSNorm and fused add-RMSNorm (``residual`` given)."""

    def forward_oot(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        weight = self.weight.data if self.has_weight else None
        if residual is None:
            CALLS["rms_norm"] += 1
            return rms_norm(x, weight, self.variance_epsilon, self.variance_size_override)
        CALLS["fused_add_rms_norm"] += 1
        # vLLM's contract: return (norm(x + residual), x + residual).
        summed = x.float() + residual.float()
        out = rms_norm(summed, weight, self.variance_epsilon, self.variance_size_override, x.dtype)
        return out, summed.to(x.dtype)


class TorchNativeSiluAndMul(SiluAndMul):
    """``silu(x[..., :d]) * x[..., d:]``."""

    def forward_oot(self, x: torch.Tensor) -> torch.Tensor:
        CALLS["silu_and_mul"] += 1
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neox: bool) -> torch.Tensor:
    # x: [tokens, heads, rotary_dim]; cos/sin: [tokens, rotary_dim // 2]
    cos = cos.unsqueeze(-2).to(x.dtype)
    sin = sin.unsqueeze(-2).to(x.dtype)
    if neox:
        x1, x2 = torch.chunk(x, 2, dim=-1)
    else:
        x1, x2 = x[..., ::2], x[..., 1::2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    if neox:
        return torch.cat((o1, o2), dim=-1)
    return torch.stack((o1, o2), dim=-1).flatten(-2)


class TorchNativeRotaryEmbedding(RotaryEmbedding):
    """Rotary position embedding (NeoX and GPT-J styles, partial rotary)."""

    def forward_oot(self, positions: torch.Tensor, query: torch.Tensor,
                    key: torch.Tensor | None = None):
        CALLS["rotary_embedding"] += 1
        positions = positions.flatten()
        n = positions.shape[0]
        cache = self.cos_sin_cache
        if cache.device != query.device or cache.dtype != query.dtype:
            cache = cache.to(device=query.device, dtype=query.dtype)
            self.cos_sin_cache = cache
        cos, sin = cache.index_select(0, positions).chunk(2, dim=-1)
        d = self.rotary_dim

        def apply(t: torch.Tensor) -> torch.Tensor:
            shape = t.shape
            t = t.reshape(n, -1, self.head_size)
            rot = _rotate(t[..., :d], cos, sin, self.is_neox_style)
            return torch.cat((rot, t[..., d:]), dim=-1).reshape(shape)

        return apply(query), (apply(key) if key is not None else None)


#: upstream class -> this platform's implementation
OPS: dict[type, type] = {
    RMSNorm: TorchNativeRMSNorm,
    SiluAndMul: TorchNativeSiluAndMul,
    RotaryEmbedding: TorchNativeRotaryEmbedding,
}


def register_custom_ops() -> list[str]:
    """Register every op with ``CustomOp.register_oot`` (idempotent)."""
    done = []
    for upstream, ours in OPS.items():
        name = upstream.__name__
        if op_registry_oot.get(name) is ours:
            continue
        if name in op_registry_oot:
            raise RuntimeError(
                f"another out-of-tree op is already registered for {name}: {op_registry_oot[name]}"
            )
        CustomOp.register_oot(ours, name=name)
        done.append(f"{name}->{ours.__name__}")
    return done
