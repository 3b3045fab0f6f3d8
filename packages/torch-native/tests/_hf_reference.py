"""transformers' greedy ``generate`` on the prompts of ``_run_engine.py``: the
reference where the vLLM build has no CPU platform to compare with (CUDA
wheels without GPU). Same shape as the engine script's ``runs``."""

from __future__ import annotations

from pathlib import Path


def hf_greedy(model: Path, prompts: list[list[int]], *, max_tokens: int = 12, top: int = 5) -> list[dict]:
    """Greedy tokens and top-``top`` logprobs (raw logits, float32) per prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    outs = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            gen = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                              do_sample=False, output_logits=True,
                              return_dict_in_generate=True, pad_token_id=0)
            logprobs = []
            for step in gen.logits:
                values, ids_ = torch.log_softmax(step[0].float(), dim=-1).topk(top)
                logprobs.append({str(i): v for i, v in zip(ids_.tolist(), values.tolist(), strict=True)})
            outs.append({"tokens": gen.sequences[0, len(p):].tolist(), "logprobs": logprobs})
    return outs


def hf_runs(model: Path, batches: list[tuple[str, list[int]]]) -> dict:
    """``{batch name: [result per prompt]}``; ``batches`` as ``[(name, prompt indices)]``."""
    from _run_engine import prompts

    ps = prompts()
    per_prompt = hf_greedy(model, ps)
    return {name: [per_prompt[i] for i in idx] for name, idx in batches}
