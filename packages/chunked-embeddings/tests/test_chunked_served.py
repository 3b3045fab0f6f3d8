"""``vllm serve --io-processor-plugin chunked_embeddings`` (one server for the
module): ``POST /pooling`` against a client that calls ``/v1/embeddings``
once per chunk with the same token windows; spans, ordering, and HTTP 400 for
every bad input with the server still serving."""

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

from vllm_plugin_core import compat

pytestmark = pytest.mark.engine

MAX_LEN = 128
ATOL = 2e-5


@pytest.fixture(scope="module")
def server(vllm_server_factory, tiny_embedding_model):
    return vllm_server_factory(
        tiny_embedding_model,
        ["--max-model-len", str(MAX_LEN), "--io-processor-plugin", "chunked_embeddings",
         "--served-model-name", "tiny-embed"],
    )


@pytest.fixture(scope="module")
def tok(tiny_embedding_model):
    return load_tokenizer(tiny_embedding_model)


def pooling(server, **data):
    status, body = server.post("/pooling", {"model": "tiny-embed", "data": data})
    return status, body


def embed_chunks(server, windows):
    vectors = []
    for ids, _, _ in windows:  # one request per chunk, as a client would
        status, body = server.post("/v1/embeddings", {"model": "tiny-embed", "input": ids})
        assert status == 200, body
        vectors.append(np.asarray(body["data"][0]["embedding"]))
    return vectors


def test_response_envelope(server):
    status, body = pooling(server, input="hello there")
    assert status == 200, body
    # No output_to_response: every vLLM wraps post_process's dict the same way.
    assert set(body) >= {"request_id", "data"}
    assert body["data"]["object"] == "list" and body["data"]["aggregate"] == "mean"
    assert isinstance(compat.io_processor_shapes_response_in_post_process(), bool)


def test_batch_of_very_different_lengths_in_order(server, tok):
    docs = [long_text(1200, seed=21), "tiny", long_text(30, seed=22), long_text(500, seed=23), "x y"]
    status, body = pooling(server, input=docs, chunk_tokens=60, overlap_tokens=10)
    assert status == 200, body
    items = body["data"]["data"]
    assert [d["index"] for d in items] == list(range(len(docs)))
    for item, text in zip(items, docs, strict=True):
        windows = chunk_windows(tok, text, 60, 10)
        ref = aggregate(embed_chunks(server, windows), [w[2] for w in windows], "mean", True)
        assert item["num_chunks"] == len(windows)
        assert item["num_tokens"] == len(tok(text, add_special_tokens=False).input_ids)
        np.testing.assert_allclose(item["embedding"], ref, atol=ATOL, rtol=1e-4)
    assert body["data"]["usage"]["prompt_tokens"] == sum(
        len(w[0]) for t in docs for w in chunk_windows(tok, t, 60, 10))


@pytest.mark.parametrize("mode", ["max", "cls_first"])
def test_other_aggregates(server, tok, mode):
    text = long_text(700, seed=24)
    status, body = pooling(server, input=[text], aggregate=mode, normalize=False)
    assert status == 200, body
    windows = chunk_windows(tok, text, MAX_LEN - 1, 0)
    vectors = embed_chunks(server, windows[:1] if mode == "cls_first" else windows)
    ref = aggregate(vectors, [w[2] for w in windows[: len(vectors)]], mode, False)
    np.testing.assert_allclose(body["data"]["data"][0]["embedding"], ref, atol=ATOL, rtol=1e-4)


def test_none_spans_map_back_to_the_text(server, tok):
    text = long_text(600, seed=25)
    status, body = pooling(server, input=text, chunk_tokens=33, overlap_tokens=3, aggregate="none")
    assert status == 200, body
    (item,) = body["data"]["data"]
    windows = chunk_windows(tok, text, 33, 3)
    vectors = embed_chunks(server, windows)
    assert len(item["chunks"]) == item["num_chunks"] == len(windows)
    for c, w, v in zip(item["chunks"], windows, vectors, strict=True):
        a, b = c["span"]
        assert (a, b) == w[1]
        assert_span_matches(text[a:b], tok.decode(w[0][1:]))
        np.testing.assert_allclose(c["embedding"], normalized(v), atol=ATOL, rtol=1e-4)


BAD = [
    ({"input": []}, "input", "'input' must not be an empty list"),
    ({"input": ""}, "input", "'input' is an empty string"),
    ({"input": ["ok", ""]}, "input", "'input[1]' is an empty string"),
    ({"input": ["ok", 7]}, "input", "'input[1]' must be a string; got int"),
    ({"input": {"a": 1}}, "input", "'input' must be a string or a list of strings"),
    ({"input": "ok", "chunk_tokens": 128}, "chunk_tokens", "'chunk_tokens' must be between 1 and 127"),
    ({"input": "ok", "chunk_tokens": 0}, "chunk_tokens", "'chunk_tokens' must be between 1 and 127"),
    ({"input": "ok", "chunk_tokens": "8"}, "chunk_tokens", "'chunk_tokens' must be an integer"),
    ({"input": "ok", "overlap_tokens": -2}, "overlap_tokens", "'overlap_tokens' must be between 0"),
    ({"input": "ok", "chunk_tokens": 8, "overlap_tokens": 8}, "overlap_tokens", "'overlap_tokens' must be"),
    ({"input": "ok", "aggregate": "median"}, "aggregate", "'aggregate' must be one of 'mean', 'max'"),
    ({"input": "ok", "normalize": "yes"}, "normalize", "'normalize' must be true or false"),
    ({"input": "ok", "extra": 1}, "extra", "unknown field(s) 'extra'"),
]


@pytest.mark.parametrize(("data", "param", "message"), BAD)
def test_bad_input_is_400_and_the_next_request_succeeds(server, data, param, message):
    status, body = pooling(server, **data)
    assert status == 400, body
    assert message in body["error"]["message"], body
    assert body["error"]["type"] == "BadRequestError"
    assert body["error"].get("param") in (param, None)
    status, body = pooling(server, input="the next request works")
    assert status == 200, body


def test_data_that_is_not_an_object_is_400(server):
    status, body = server.post("/pooling", {"model": "tiny-embed", "data": "just text"})
    assert status == 400, body
    assert "must be an object" in body["error"]["message"]
