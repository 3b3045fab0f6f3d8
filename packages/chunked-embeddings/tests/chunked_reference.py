"""An independent reference for the engine tests: the HF tokenizer used
directly, plain loops for windows, numpy float64 for merging. It shares no
code with the plugin."""

from __future__ import annotations

import numpy as np

BOS = "<|bos|>"


def load_tokenizer(model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    assert tok.is_fast
    # The tiny model's post-processor puts <|bos|> first and nothing last.
    bos = tok.convert_tokens_to_ids(BOS)
    assert tok("abc").input_ids[0] == bos and tok("abc").input_ids[1:] == tok("abc", add_special_tokens=False).input_ids
    return tok


def chunk_windows(tok, text, chunk, overlap):
    """[(token ids with specials, (char start, char end), content token count)]"""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = enc.input_ids, enc.offset_mapping
    bos = tok.convert_tokens_to_ids(BOS)
    out = []
    start = 0
    while True:
        end = min(start + chunk, len(ids))
        out.append(([bos, *ids[start:end]], (offs[start][0], offs[end - 1][1]), end - start))
        if end == len(ids):
            return out
        start += chunk - overlap


def aggregate(vectors, counts, mode, normalize):
    v = np.asarray(vectors, dtype=np.float64)
    if mode == "mean":
        w = np.asarray(counts, dtype=np.float64)
        out = (v * w[:, None]).sum(0) / w.sum()
    elif mode == "max":
        out = v.max(0)
    elif mode == "cls_first":
        out = v[0]
    else:
        raise ValueError(mode)
    if normalize:
        out = out / np.linalg.norm(out)
    return out


def normalized(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def long_text(n_words, seed=0):
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "the", "of", "model", "vector", "chunk", "long", "text",
             "naïve", "café", "42", "3.14", "end.", "(see", "note)", "🙂", "token", "window", "span"]
    parts = []
    for i in range(n_words):
        parts.append(rng.choice(words))
        if i % 13 == 12:
            parts.append("\n")
    return " ".join(parts)


def assert_span_matches(span_text, decoded):
    """The span is the decoded text; where a window boundary splits a multi-byte
    character (byte-level BPE), the decoded side shows U+FFFD and the span holds
    the whole character."""
    span_text, decoded = span_text.strip(), decoded.strip()
    if "\ufffd" not in decoded:
        assert span_text == decoded
        return
    pos = 0
    for piece in decoded.split("\ufffd"):
        found = span_text.find(piece, pos)
        assert found >= 0, (span_text, decoded)
        pos = found + len(piece)
