"""Windowing, spans, special tokens, slicing, aggregation, validation and the
processor's plan/merge, without an engine (the tiny model's tokenizer only)."""

from __future__ import annotations

import tracemalloc
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from chunked_reference import aggregate as ref_aggregate
from chunked_reference import assert_span_matches, chunk_windows, load_tokenizer, long_text

from vllm_plugin_chunked_embeddings import chunking
from vllm_plugin_chunked_embeddings._errors import ChunkedEmbeddingsRequestError
from vllm_plugin_chunked_embeddings.aggregate import merge
from vllm_plugin_chunked_embeddings.request import parse_request


@pytest.fixture(scope="module")
def tok(tiny_embedding_model):
    return load_tokenizer(tiny_embedding_model)


# --- windows ---

@pytest.mark.parametrize("n", [1, 2, 5, 9, 10, 11, 100, 257])
@pytest.mark.parametrize(("chunk", "overlap"), [(1, 0), (3, 0), (3, 2), (10, 0), (10, 3), (10, 9)])
def test_windows_cover_everything_in_order(n, chunk, overlap):
    ws = list(chunking.windows(n, chunk, overlap))
    assert len(ws) == chunking.num_windows(n, chunk, overlap)
    assert ws[0][0] == 0 and ws[-1][1] == n
    for (s, e), (s2, _) in pairwise(ws):
        assert e - s == chunk  # only the last may be short
        assert s2 == s + chunk - overlap
    assert all(0 < e - s <= chunk for s, e in ws)
    covered = set()
    for s, e in ws:
        covered.update(range(s, e))
    assert covered == set(range(n))


def test_windows_edge_cases():
    assert list(chunking.windows(0, 4, 0)) == []
    assert list(chunking.windows(4, 4, 0)) == [(0, 4)]
    assert list(chunking.windows(5, 4, 1)) == [(0, 4), (3, 5)]
    with pytest.raises(ValueError):
        list(chunking.windows(5, 4, 4))


# --- tokenizer facts ---

def test_special_tokens_of_the_tiny_model(tok):
    prefix, suffix = chunking.special_tokens(tok)
    assert prefix == [tok.convert_tokens_to_ids("<|bos|>")] and suffix == []


class _FakeBertTok:
    """[CLS] ids [SEP], one token per character."""

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False, **kw):
        ids = [ord(c) for c in text]
        out = {"input_ids": [101, *ids, 102] if add_special_tokens else ids}
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out


class _FakePrependTok(_FakeBertTok):
    """Prepends a marker token to every text (like an old Llama normalizer)."""

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False, **kw):
        out = super().__call__(text, add_special_tokens=False, return_offsets_mapping=True)
        out["input_ids"] = [7, *out["input_ids"]]
        out["offset_mapping"] = [(0, 0), *out["offset_mapping"]]
        return out


def test_special_tokens_prefix_and_suffix():
    assert chunking.special_tokens(_FakeBertTok()) == ([101], [102])


def test_slicing_is_checked(tok):
    assert chunking.slicing_is_exact(tok)
    assert chunking.slicing_is_exact(_FakeBertTok())
    assert not chunking.slicing_is_exact(_FakePrependTok())


@pytest.mark.parametrize("slice_chars", [37, 200, 1000])
def test_sliced_tokenization_equals_whole(tok, slice_chars):
    text = long_text(3000, seed=slice_chars) + " nospace" * 3 + "x" * 500 + " tail"
    whole = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    doc = chunking.tokenize_document(tok, text, slice_chars=slice_chars)
    # The run of 500 'x' has no space to cut at: the cut falls inside it, so
    # compare everything except the tokens around it.
    ids, offs = whole.input_ids, whole.offset_mapping
    x0 = text.index("x" * 500)
    head = [i for i, (s, _) in enumerate(offs) if s < x0 - 10]
    assert list(doc.ids[: len(head)]) == [ids[i] for i in head]
    assert list(zip(doc.starts[: len(head)], doc.ends[: len(head)], strict=True)) == [tuple(offs[i]) for i in head]
    assert doc.ends[-1] == len(text)


def test_slices_cut_before_a_single_space():
    text = "ab  cd ef" * 50
    bounds = list(chunking.slice_bounds(text, 20))
    assert bounds[0][0] == 0 and bounds[-1][1] == len(text)
    for (_, e), (s, _) in pairwise(bounds):
        assert e == s and text[e] == " " and not text[e - 1].isspace()


def test_spans_map_back_to_text(tok):
    text = long_text(400, seed=3)
    doc = chunking.tokenize_document(tok, text, slice_chars=150)
    for s, e in chunking.windows(len(doc), 17, 5):
        a, b = chunking.char_span(doc, s, e)
        assert_span_matches(text[a:b], tok.decode(list(doc.ids[s:e])))
    ref = chunk_windows(tok, text, 17, 5)
    assert [chunking.char_span(doc, s, e) for s, e in chunking.windows(len(doc), 17, 5)] == [r[1] for r in ref]


def test_memory_is_bounded_for_a_very_long_document(tok):
    text = long_text(400_000, seed=5)  # ~2 million characters
    assert len(text) > 2_000_000
    tracemalloc.start()
    try:
        doc = chunking.tokenize_document(tok, text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n = len(doc)
    assert n > 1_500_000
    # 12 bytes a token for the three arrays (array growth doubles at worst),
    # plus one slice's worth of tokenizer output; whole-text tokenisation
    # would hold ~250 bytes a token in Python objects.
    assert peak < 3 * 12 * n + 40 * 2**20, (peak, n)


# --- aggregation ---

def test_merge_modes_match_reference():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 16)).astype(np.float32)
    counts = [10, 10, 10, 10, 3]
    for mode in ("mean", "max", "cls_first"):
        for norm in (True, False):
            got = merge(torch.from_numpy(v), counts, mode, norm).numpy()
            np.testing.assert_allclose(got, ref_aggregate(v, counts, mode, norm), rtol=1e-5, atol=1e-6)
    # mean weights by token count
    got = merge(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), [3, 1], "mean", False)
    assert torch.allclose(got, torch.tensor([0.75, 0.25]))
    assert torch.allclose(merge(torch.tensor([[3.0, 4.0]]), [1], "mean", True).norm(), torch.tensor(1.0))


# --- validation ---

LIMIT = dict(max_content_tokens=127, max_model_len=128, num_special_tokens=1)

BAD = [
    ("x", "data", "must be an object"),
    ({}, "input", "'input' is required"),
    ({"input": ""}, "input", "'input' is an empty string"),
    ({"input": []}, "input", "must not be an empty list"),
    ({"input": ["a", ""]}, "input", "'input[1]' is an empty string"),
    ({"input": ["a", 3]}, "input", "'input[1]' must be a string; got int"),
    ({"input": 5}, "input", "'input' must be a string or a list of strings"),
    ({"input": "a", "chunk_tokens": 0}, "chunk_tokens", "between 1 and 127"),
    ({"input": "a", "chunk_tokens": 128}, "chunk_tokens", "max length 128 minus its 1 special"),
    ({"input": "a", "chunk_tokens": "64"}, "chunk_tokens", "'chunk_tokens' must be an integer; got str"),
    ({"input": "a", "chunk_tokens": True}, "chunk_tokens", "must be an integer; got bool"),
    ({"input": "a", "chunk_tokens": 8.0}, "chunk_tokens", "must be an integer; got float"),
    ({"input": "a", "overlap_tokens": -1}, "overlap_tokens", "between 0 and chunk_tokens - 1 (126)"),
    ({"input": "a", "chunk_tokens": 8, "overlap_tokens": 8}, "overlap_tokens", "(7); got 8"),
    ({"input": "a", "aggregate": "sum"}, "aggregate", "'mean', 'max', 'cls_first', 'none'; got 'sum'"),
    ({"input": "a", "aggregate": 1}, "aggregate", "must be one of"),
    ({"input": "a", "normalize": "yes"}, "normalize", "'normalize' must be true or false; got str"),
    ({"input": "a", "chunk": 8}, "chunk", "unknown field(s) 'chunk'"),
]


@pytest.mark.parametrize(("data", "field", "message"), BAD)
def test_validation_names_the_field(data, field, message):
    with pytest.raises(ChunkedEmbeddingsRequestError) as e:
        parse_request(data, **LIMIT)
    assert message in str(e.value)
    assert e.value.parameter == field
    assert isinstance(e.value, ValueError)


def test_validation_defaults():
    r = parse_request({"input": "a b"}, **LIMIT)
    assert (r.inputs, r.chunk_tokens, r.overlap_tokens, r.aggregate, r.normalize, r.single) == (
        ("a b",), 127, 0, "mean", True, True)
    r = parse_request({"input": ["a", "b"], "chunk_tokens": 10, "overlap_tokens": 9, "aggregate": "none",
                       "normalize": False}, **LIMIT)
    assert (r.chunk_tokens, r.overlap_tokens, r.aggregate, r.normalize, r.single) == (10, 9, "none", False, False)


def test_error_is_a_vllm_validation_error():
    from vllm.exceptions import VLLMClientError, VLLMValidationError

    e = ChunkedEmbeddingsRequestError("bad 'x'", parameter="x")
    assert isinstance(e, VLLMValidationError) and isinstance(e, VLLMClientError) and isinstance(e, ValueError)
    assert str(e) == "bad 'x'"


# --- the processor, with a fake engine ---

@pytest.fixture(scope="module")
def processor(tok):
    from vllm_plugin_chunked_embeddings.processor import ChunkedEmbeddingsProcessor

    config = SimpleNamespace(model_config=SimpleNamespace(max_model_len=128))
    return ChunkedEmbeddingsProcessor(config, SimpleNamespace(tokenizer=tok))


def fake_engine(prompts, dim=8):
    """A deterministic 'embedding' per prompt: depends on its ids only."""
    outs = []
    for p in prompts:
        ids = torch.tensor(p["prompt_token_ids"], dtype=torch.float32)
        v = torch.stack([torch.cos(ids * (k + 1) / 7.0).mean() for k in range(dim)])
        outs.append(SimpleNamespace(outputs=SimpleNamespace(data=v)))
    return outs


def test_processor_defaults_from_the_model(processor):
    assert processor.max_content_tokens == 127 and processor.prefix == [0] and processor.suffix == []
    assert processor.merge_pooling_params().task == "embed"
    assert processor.slice_chars is not None


@pytest.mark.parametrize("aggregate", ["mean", "max", "cls_first", "none"])
def test_processor_plan_and_merge_in_input_order(processor, tok, aggregate):
    docs = [long_text(2000, seed=1), "tiny", long_text(40, seed=2), long_text(700, seed=3)]
    data = {"input": docs, "chunk_tokens": 30, "overlap_tokens": 7, "aggregate": aggregate, "normalize": True}
    req = processor.parse_data(data)
    prompts = processor.pre_process(req, request_id=f"r-{aggregate}")
    expected_prompts = []
    refs = []
    for d in docs:
        w = chunk_windows(tok, d, 30, 7)
        refs.append(w)
        expected_prompts += [x[0] for x in (w[:1] if aggregate == "cls_first" else w)]
    assert [p["prompt_token_ids"] for p in prompts] == expected_prompts
    assert all(len(p["prompt_token_ids"]) <= 31 for p in prompts)
    out = processor.post_process(fake_engine(prompts), request_id=f"r-{aggregate}")
    assert [d["index"] for d in out["data"]] == [0, 1, 2, 3]
    assert out["usage"]["prompt_tokens"] == sum(len(p["prompt_token_ids"]) for p in prompts)
    for item, w, text in zip(out["data"], refs, docs, strict=True):
        assert item["num_chunks"] == len(w)
        assert item["num_tokens"] == len(tok(text, add_special_tokens=False).input_ids)
        vecs = [fake_engine([{"prompt_token_ids": x[0]}])[0].outputs.data.numpy() for x in w]
        if aggregate == "none":
            assert [c["span"] for c in item["chunks"]] == [list(x[1]) for x in w]
            assert [c["num_tokens"] for c in item["chunks"]] == [x[2] for x in w]
            for c, v in zip(item["chunks"], vecs, strict=True):
                np.testing.assert_allclose(c["embedding"], v / np.linalg.norm(v), rtol=1e-5, atol=1e-6)
        else:
            ref = ref_aggregate(vecs, [x[2] for x in w], aggregate, True)
            np.testing.assert_allclose(item["embedding"], ref, rtol=1e-5, atol=1e-6)
    assert not processor._pending


def test_processor_rejects_text_without_tokens_and_keeps_no_plan(processor):
    saved = processor.tokenizer

    class Empty:
        def __call__(self, text, **kw):
            return {"input_ids": [], "offset_mapping": []} if text == "void" else saved(text, **kw)

    processor.tokenizer = Empty()
    try:
        with pytest.raises(ChunkedEmbeddingsRequestError, match=r"'input\[1\]' produces no tokens"):
            processor.pre_process(processor.parse_data({"input": ["a", "void"]}), request_id="x")
    finally:
        processor.tokenizer = saved
    assert "x" not in processor._pending


def test_processor_post_process_needs_its_plan(processor):
    with pytest.raises(RuntimeError, match="no plan"):
        processor.post_process([], request_id="never-seen")
