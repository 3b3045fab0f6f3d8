"""Small random-weight NanoChat checkpoints saved by transformers itself
(for tests and the demo), cached by content like core's test models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vllm_plugin_core.testing.models import cached_build, train_bpe_tokenizer

#: (hidden, heads, kv heads, layers): head_dim 64 everywhere (vLLM's CPU
#: attention rejects smaller heads); MHA, GQA and MQA; depths 1 to 3.
SHAPES = {
    "mha-2l": (128, 2, 2, 2),
    "gqa-3l": (256, 4, 2, 3),
    "mqa-1l": (128, 2, 1, 1),
}


def build_nanochat(shape: str, *, seed: int = 0) -> Path:
    hidden, heads, kv, layers = SHAPES[shape]
    spec = {"shape": shape, "hidden": hidden, "heads": heads, "kv": kv, "layers": layers, "seed": seed}

    def build(out: Path) -> None:
        import torch
        from transformers import NanoChatConfig, NanoChatForCausalLM

        tok = train_bpe_tokenizer(512, out, 512)
        config = NanoChatConfig(
            vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=512,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            initializer_range=0.2, final_logit_softcapping=15.0,
        )
        torch.manual_seed(seed)
        NanoChatForCausalLM(config).to(torch.float32).save_pretrained(out, safe_serialization=True)

    return cached_build("nanochat", spec, build)


def renamed_copy(src: Path, dst: Path, architecture: str) -> Path:
    """The same checkpoint with a renamed ``architectures`` entry."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = [architecture]
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst
