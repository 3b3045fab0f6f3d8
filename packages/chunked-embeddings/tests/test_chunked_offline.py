"""The plugin in a real offline ``LLM`` (one engine for the module), loaded by
vLLM's own IO-processor loader, against what a client gets by embedding each
chunk itself with ``LLM.embed`` on the same token windows (special tokens
included) and merging with numpy."""

from __future__ import annotations

import numpy as np
import pytest
from chunked_reference import (
    aggregate,
    assert_span_matches,
    chunk_windows,
    load_tokenizer,
    long_text,
    normalized,
)

from vllm_plugin_chunked_embeddings._errors import ChunkedEmbeddingsRequestError

pytestmark = pytest.mark.engine

MAX_LEN = 128  # the tiny BERT's max_position_embeddings
ATOL = 2e-5


@pytest.fixture(scope="module")
def llm(vllm_llm_factory, tiny_embedding_model):
    return vllm_llm_factory(tiny_embedding_model, max_model_len=MAX_LEN,
                            io_processor_plugin="chunked_embeddings")


@pytest.fixture(scope="module")
def tok(tiny_embedding_model):
    return load_tokenizer(tiny_embedding_model)


def plugin(llm, **data):
    out = llm.encode({"data": data}, pooling_task="plugin", use_tqdm=False)
    assert len(out) == 1
    return out[0].outputs


def client_side(llm, tok, text, chunk, overlap):
    windows = chunk_windows(tok, text, chunk, overlap)
    outs = llm.embed([{"prompt_token_ids": w[0]} for w in windows], use_tqdm=False)
    return windows, [np.asarray(o.outputs.embedding) for o in outs]


def test_entry_point_discovered(assert_entry_point_discovered):
    func = assert_entry_point_discovered("vllm.io_processor_plugins", "chunked_embeddings")
    assert func() == "vllm_plugin_chunked_embeddings.processor.ChunkedEmbeddingsProcessor"


DOCS = [long_text(1500, seed=11), "one short line", long_text(60, seed=12), long_text(400, seed=13)]


@pytest.mark.parametrize(("aggregate_mode", "chunk", "overlap", "normalize"), [
    ("mean", None, 0, True),
    ("mean", 50, 13, False),
    ("max", 40, 0, True),
    ("cls_first", 64, 8, True),
])
def test_merged_embedding_equals_client_side(llm, tok, aggregate_mode, chunk, overlap, normalize):
    data = {"input": DOCS, "overlap_tokens": overlap, "aggregate": aggregate_mode, "normalize": normalize}
    if chunk is not None:
        data["chunk_tokens"] = chunk
    chunk = chunk or MAX_LEN - 1  # default: the max length minus the one special token (<|bos|>)
    out = plugin(llm, **data)
    assert out["aggregate"] == aggregate_mode
    assert [d["index"] for d in out["data"]] == list(range(len(DOCS)))
    for item, text in zip(out["data"], DOCS, strict=True):
        windows, vectors = client_side(llm, tok, text, chunk, overlap)
        assert item["num_chunks"] == len(windows)
        assert item["num_tokens"] == len(tok(text, add_special_tokens=False).input_ids)
        ref = aggregate(vectors, [w[2] for w in windows], aggregate_mode, normalize)
        np.testing.assert_allclose(item["embedding"], ref, atol=ATOL, rtol=1e-4)
    assert out["data"][0]["num_chunks"] > 5  # the long document really was chunked


def test_none_returns_every_chunk_with_its_span(llm, tok):
    text = DOCS[0]
    out = plugin(llm, input=text, chunk_tokens=45, overlap_tokens=5, aggregate="none")
    windows, vectors = client_side(llm, tok, text, 45, 5)
    (item,) = out["data"]
    assert item["num_chunks"] == len(item["chunks"]) == len(windows)
    for c, w, v in zip(item["chunks"], windows, vectors, strict=True):
        assert tuple(c["span"]) == w[1] and c["num_tokens"] == w[2]
        a, b = c["span"]
        assert_span_matches(text[a:b], tok.decode(w[0][1:]))
        np.testing.assert_allclose(c["embedding"], normalized(v), atol=ATOL, rtol=1e-4)
    assert item["chunks"][0]["span"][0] == 0 and item["chunks"][-1]["span"][1] == len(text.rstrip())


def test_bad_input_raises_and_the_engine_keeps_working(llm):
    for data, message in [
        ({"input": []}, "'input' must not be an empty list"),
        ({"input": "x", "chunk_tokens": MAX_LEN}, "'chunk_tokens' must be between 1 and 127"),
        ({"input": "x", "aggregate": "median"}, "'aggregate' must be one of"),
    ]:
        with pytest.raises(ChunkedEmbeddingsRequestError, match=message):
            plugin(llm, **data)
    assert plugin(llm, input="still fine")["data"][0]["num_chunks"] == 1
