"""NanoChat (transformers' ``NanoChatForCausalLM``) on vLLM's own layers.

Follows transformers' modeling exactly:

* RMS norms without weights (``x * rsqrt(mean(x^2) + eps)``, in float32), an
  extra norm right after the embedding and one after the last layer;
* attention with q/k/v/o projections (optional bias), rotary embedding applied
  BEFORE a weightless per-head RMS norm of q and k, ``rotate_half`` with the
  opposite sign convention to Llama's (``cat(x2, -x1)``), grouped-query heads,
  scale ``head_dim ** -0.5``;
* MLP ``fc2(relu(fc1(x)) ** 2)``;
* untied ``lm_head`` (tied when the config says so) and final logit
  soft-capping ``tanh(logits / cap) * cap`` (vLLM's ``LogitsProcessor``).

The rotary embedding is computed here because vLLM's neox rotary uses the
other sign convention. Attention and the KV cache are vLLM's ``Attention``
layer; projections and embeddings are vLLM's tensor-parallel layers.

LoRA (``SupportsLoRA``): vLLM wraps every linear layer (``qkv_proj`` packs
peft's ``q_proj``/``k_proj``/``v_proj``; ``o_proj``, ``fc1``, ``fc2``), the
embedding (``embed_tokens``) and the LM head (``lm_head``, through the
``logits_processor`` it replaces), so adapters saved by peft for
transformers' NanoChat load by their own module names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsLoRA

__all__ = ["NanoChatForCausalLM"]


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' ``NanoChatRMSNorm`` (no weight)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


def rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


class NanoChatRotary(nn.Module):
    """RoPE with NanoChat's ``rotate_half(x) = cat(x2, -x1)``."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.head_dim = head_dim

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # x: [tokens, heads, head_dim]
        freqs = positions.float()[:, None] * self.inv_freq.to(x.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
        xf = x.float()
        half = self.head_dim // 2
        rotated = torch.cat((xf[..., half:], -xf[..., :half]), dim=-1)
        return (xf * cos + rotated * sin).type_as(x)


class NanoChatAttention(nn.Module):
    def __init__(self, config: Any, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        self.total_heads = config.num_attention_heads
        self.total_kv_heads = config.num_key_value_heads or config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.total_heads
        self.num_heads = self.total_heads // tp
        self.num_kv_heads = max(1, self.total_kv_heads // tp)
        self.eps = config.rms_norm_eps
        bias = bool(getattr(config, "attention_bias", False))
        quant = vllm_config.quant_config
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, self.total_heads,
                                          self.total_kv_heads, bias=bias, quant_config=quant,
                                          prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(self.total_heads * self.head_dim, config.hidden_size, bias=bias,
                                        quant_config=quant, prefix=f"{prefix}.o_proj")
        self.rotary = NanoChatRotary(self.head_dim, rope_theta(config))
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim**-0.5,
                              num_kv_heads=self.num_kv_heads, cache_config=vllm_config.cache_config,
                              quant_config=quant, prefix=f"{prefix}.attn")

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        # RoPE, then norm (NanoChat's order).
        q = rms_norm(self.rotary(positions, q), self.eps).reshape(-1, q_size)
        k = rms_norm(self.rotary(positions, k), self.eps).reshape(-1, kv_size)
        out = self.attn(q, k, v)
        out, _ = self.o_proj(out)
        return out


class NanoChatMLP(nn.Module):
    def __init__(self, config: Any, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        act = getattr(config, "hidden_act", "relu2")
        if act != "relu2":
            raise ValueError(f"NanoChat with hidden_act={act!r} is not supported (only relu2)")
        quant = vllm_config.quant_config
        self.fc1 = ColumnParallelLinear(config.hidden_size, config.intermediate_size, bias=False,
                                        quant_config=quant, prefix=f"{prefix}.fc1")
        self.fc2 = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=False,
                                     quant_config=quant, prefix=f"{prefix}.fc2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.fc1(x)
        x = torch.relu(x).square()
        x, _ = self.fc2(x)
        return x


class NanoChatDecoderLayer(nn.Module):
    def __init__(self, config: Any, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.eps = config.rms_norm_eps
        self.self_attn = NanoChatAttention(config, vllm_config, f"{prefix}.self_attn")
        self.mlp = NanoChatMLP(config, vllm_config, f"{prefix}.mlp")

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.self_attn(positions, rms_norm(hidden, self.eps))
        return hidden + self.mlp(rms_norm(hidden, self.eps))


class NanoChatModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.eps = config.rms_norm_eps
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   prefix=f"{prefix}.embed_tokens")
        self.layers = nn.ModuleList(
            NanoChatDecoderLayer(config, vllm_config, f"{prefix}.layers.{i}")
            for i in range(config.num_hidden_layers)
        )

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        hidden = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        hidden = rms_norm(hidden, self.eps)  # NanoChat's extra norm before the layers
        for layer in self.layers:
            hidden = layer(positions, hidden)
        return rms_norm(hidden, self.eps)


class NanoChatForCausalLM(nn.Module, SupportsLoRA):
    """vLLM implementation of transformers' ``NanoChatForCausalLM``."""

    # peft names the q/k/v projections of transformers' model; vLLM packs them.
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    # LoRA on the embedding and on the LM head (vLLM wraps ``logits_processor``
    # for the latter, so both attribute names are part of the contract).
    embedding_modules = {"embed_tokens": "input_embeddings", "lm_head": "output_embeddings"}

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.model = NanoChatModel(vllm_config=vllm_config, prefix=f"{prefix}model" if not prefix
                                   else f"{prefix}.model")
        # Always a ParallelLMHead (LoRA's LM-head wrapper expects one), sharing
        # the embedding's weight when the config ties them.
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size,
                                      quant_config=vllm_config.quant_config,
                                      prefix=f"{prefix}lm_head" if not prefix else f"{prefix}.lm_head")
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(
            config.vocab_size, soft_cap=getattr(config, "final_logit_softcapping", None))

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    # Older spelling some vLLM code paths still call.
    get_input_embeddings = embed_input_ids

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: Any = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        return self.model(input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor, *args: Any) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states, *args)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        stacked = (("qkv_proj", "q_proj", "q"), ("qkv_proj", "k_proj", "k"), ("qkv_proj", "v_proj", "v"))
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, weight in weights:
            if "rotary" in name or name.endswith("inv_freq"):
                continue
            if name == "lm_head.weight" and getattr(self.config, "tie_word_embeddings", False):
                continue
            for packed, shard, shard_id in stacked:
                if f".{shard}." in name:
                    target = name.replace(f".{shard}.", f".{packed}.")
                    param = params[target]
                    param.weight_loader(param, weight, shard_id)
                    loaded.add(target)
                    break
            else:
                if name not in params:
                    raise ValueError(f"NanoChat checkpoint has an unexpected weight {name!r}")
                param = params[name]
                getattr(param, "weight_loader", default_weight_loader)(param, weight)
                loaded.add(name)
        return loaded
