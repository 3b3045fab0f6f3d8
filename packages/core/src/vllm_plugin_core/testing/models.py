"""Small deterministic models built offline, cached by content.

Every builder takes a spec, hashes it together with the builder's version,
and builds into ``<cache>/<kind>-<hash>`` atomically (a temporary folder,
renamed when complete), so concurrent test processes and interrupted runs
never see half a model. The cache is ``VLLM_PLUGIN_CACHE_DIR`` or
``~/.cache/vllm-plugins``.

Nothing here touches a model hub: tokenizers are trained in a second on a
fixed corpus, weights are random with a fixed seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "CORPUS",
    "build_causal_lm",
    "build_embedding_model",
    "build_lora_adapter",
    "cache_dir",
    "cached_build",
]

BUILDER_VERSION = 1

#: Fixed training text for the tokenizers (varied enough to learn merges).
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "vLLM serves large language models quickly and efficiently.",
    "Plugins extend vLLM without forking it: samplers, stats, models and more.",
    "Once upon a time, a small model generated a few tokens on a CPU.",
    "Hello world! How are you today? I am fine, thank you.",
    "def add(a, b):\n    return a + b\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000; colons: a:b; quotes: \"x\"; stars: *y*.",
    "Repetition, repetition, repetition: the same words again and again and again.",
] * 4


def cache_dir() -> Path:
    from vllm_plugin_core._core_settings import SETTINGS

    root = SETTINGS.get("CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vllm-plugins"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _digest(kind: str, spec: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "v": BUILDER_VERSION, **spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_build(kind: str, spec: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Return ``<cache>/<kind>-<hash(spec)>``, calling ``build(tmpdir)`` if absent."""
    final = cache_dir() / f"{kind}-{_digest(kind, spec)}"
    if (final / ".complete").exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=final.parent))
    try:
        build(tmp)
        (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
        (tmp / ".complete").write_text("ok\n")
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first
            if not (final / ".complete").exists():
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def train_bpe_tokenizer(vocab_size: int, out: Path, model_max_length: int) -> Any:
    """Train a byte-level BPE tokenizer on :data:`CORPUS` and save it to ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", 0)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        model_max_length=model_max_length,
    )
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    fast.save_pretrained(out)
    return fast


def build_causal_lm(
    *,
    architecture: str = "LlamaForCausalLM",
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int | None = None,
    intermediate_size: int = 256,
    vocab_size: int = 512,
    max_position_embeddings: int = 4096,
    seed: int = 0,
    init_std: float = 0.2,
) -> Path:
    """A tiny random Llama-style causal LM with a trained BPE tokenizer.

    head_dim is ``hidden_size // num_heads`` and must be >= 64 on vLLM's CPU
    attention (it rejects 16). ``init_std`` is larger than usual so that the
    random model's next-token distribution is peaked, not uniform.
    """
    spec = {k: v for k, v in locals().items()}

    def build(out: Path) -> None:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = train_bpe_tokenizer(vocab_size, out, max_position_embeddings)
        config = LlamaConfig(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads or num_heads,
            intermediate_size=intermediate_size,
            vocab_size=vocab_size,
            max_position_embeddings=max_position_embeddings,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=False,
            initializer_range=init_std,
            torch_dtype="float32",
        )
        config.architectures = [architecture]
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
        model.save_pretrained(out, safe_serialization=True)

    return cached_build("causal-lm", spec, build)


def build_embedding_model(
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 256,
    vocab_size: int = 512,
    max_position_embeddings: int = 128,
    seed: int = 0,
) -> Path:
    """A tiny random BERT encoder (``BertModel``) with a trained BPE tokenizer,
    for embedding (pooling) tests. ``max_position_embeddings`` is the model's
    context length."""
    spec = {k: v for k, v in locals().items()}

    def build(out: Path) -> None:
        import torch
        from transformers import BertConfig, BertModel

        tok = train_bpe_tokenizer(vocab_size, out, max_position_embeddings)
        config = BertConfig(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            vocab_size=vocab_size,
            max_position_embeddings=max_position_embeddings,
            pad_token_id=tok.pad_token_id,
            torch_dtype="float32",
        )
        config.architectures = ["BertModel"]
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(out, safe_serialization=True)

    return cached_build("embedding", spec, build)


def build_lora_adapter(
    base_model: Path,
    *,
    rank: int = 8,
    alpha: int = 16,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 1,
    scale: float = 0.5,
) -> Path:
    """A PEFT-format LoRA adapter (``adapter_config.json`` and
    ``adapter_model.safetensors``) for a model from :func:`build_causal_lm`.
    Both A and B are non-zero so the adapter changes the output."""
    base_model = Path(base_model)
    spec = {"base": base_model.name, **{k: v for k, v in locals().items() if k != "base_model"}}

    def build(out: Path) -> None:
        import torch
        from safetensors.torch import save_file

        config = json.loads((base_model / "config.json").read_text())
        hidden = config["hidden_size"]
        heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
        head_dim = hidden // heads
        out_dims = {"q_proj": hidden, "k_proj": kv * head_dim, "v_proj": kv * head_dim, "o_proj": hidden}
        gen = torch.Generator().manual_seed(seed)
        tensors = {}
        for layer in range(config["num_hidden_layers"]):
            for mod in target_modules:
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
                tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen) * scale
                tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_dims[mod], rank, generator=gen) * scale
        save_file(tensors, str(out / "adapter_model.safetensors"))
        (out / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": rank,
            "lora_alpha": alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "target_modules": list(target_modules),
            "base_model_name_or_path": str(base_model),
            "fan_in_fan_out": False,
            "modules_to_save": None,
            "use_rslora": False,
            "use_dora": False,
        }, indent=2))

    return cached_build("lora", spec, build)
