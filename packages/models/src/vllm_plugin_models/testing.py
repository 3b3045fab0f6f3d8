"""Small random-weight NanoChat checkpoints saved by transformers itself, and
LoRA adapters for them saved by peft itself (for tests, the demo and the
benchmark), cached by content like core's test models."""

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
    # The benchmark's checkpoint: large enough that a step is not all overhead.
    "bench-768x12": (768, 12, 12, 12),
}

#: Every projection of transformers' NanoChat (peft's names).
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")


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


def build_nanochat_lora(base: Path, *, targets: tuple[str, ...] = ALL_TARGETS, rank: int = 8,
                        seed: int = 1, b_std: float = 0.1) -> Path:
    """A LoRA adapter for transformers' ``NanoChatForCausalLM`` at ``base``,
    made by ``peft.get_peft_model(...).save_pretrained``. peft starts B at
    zero (a no-op adapter); here B is random so the adapter changes outputs."""
    base = Path(base)
    spec = {"base": base.name, "targets": list(targets), "rank": rank, "seed": seed, "b_std": b_std}

    def build(out: Path) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        torch.manual_seed(seed)
        lora = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                target_modules=list(targets)))
        with torch.no_grad():
            for name, param in lora.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, b_std)
        lora.save_pretrained(out)

    return cached_build("nanochat-lora", spec, build)


def retargeted_copy(adapter: Path, dst: Path, renames: dict[str, str]) -> Path:
    """A copy of ``adapter`` (config and weights) whose modules are renamed,
    e.g. ``{"fc1": "gate_proj"}``: an adapter for modules NanoChat lacks."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
    cfg["target_modules"] = sorted(renames.get(t, t) for t in cfg["target_modules"])
    (dst / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    tensors = load_file(str(Path(adapter) / "adapter_model.safetensors"))
    renamed = {}
    for key, value in tensors.items():
        for old, new in renames.items():
            key = key.replace(f".{old}.", f".{new}.")
        renamed[key] = value
    save_file(renamed, str(dst / "adapter_model.safetensors"))
    return dst


def hf_greedy(model_or_path, prompts: list[list[int]], n: int) -> tuple[list[list[int]], list[list[float]]]:
    """transformers' greedy tokens and their logprobs, one prompt at a time,
    full forward each step (no cache, no padding): the reference. Takes a
    checkpoint path or a loaded model (e.g. a ``peft.PeftModel``)."""
    import torch

    model = model_or_path
    if isinstance(model_or_path, (str, Path)):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_or_path, dtype=torch.float32)
    model.eval()
    outs, lps = [], []
    with torch.no_grad():
        for p in prompts:
            ctx, toks, top = list(p), [], []
            for _ in range(n):
                lp = torch.log_softmax(model(input_ids=torch.tensor([ctx])).logits[0, -1].float(), -1)
                t = int(lp.argmax())
                toks.append(t)
                top.append(float(lp[t]))
                ctx.append(t)
            outs.append(toks)
            lps.append(top)
    return outs, lps


def hf_peft_greedy(base: Path, adapter: Path, prompts: list[list[int]], n: int) -> list[list[int]]:
    """Greedy tokens of transformers' NanoChat with the adapter applied by peft."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return hf_greedy(PeftModel.from_pretrained(model, str(adapter)), prompts, n)[0]
