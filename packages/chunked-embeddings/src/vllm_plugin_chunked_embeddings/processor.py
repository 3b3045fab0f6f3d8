"""The IO processor: chunk documents, embed every chunk in one batch, merge.

vLLM (0.31 to 0.34) drives it the same way online and offline::

    parse_data(data) -> ChunkRequest            # validation, HTTP 400 on error
    pre_process(request, request_id) -> prompts  # one token prompt per chunk, all documents
    merge_pooling_params() -> PoolingParams(task="embed")
    ... the engine embeds every chunk ...
    post_process(outputs, request_id) -> dict    # merged per document, in input order

The plan made in ``pre_process`` (which chunk belongs to which document, its
token count and span) is kept in a small bounded table keyed by the request
id until ``post_process`` takes it (offline ``LLM.encode`` passes no id; one
call runs at a time there).

Response shaping: this processor defines no ``output_to_response``, so every
supported vLLM returns ``{"request_id", "created_at", "data": <post_process's
dict>}`` (0.31 calls ``output_to_response`` only when defined; 0.32+
never do; ``vllm_plugin_core.compat.io_processor_shapes_response_in_post_process``
tells the two apart, and with no ``output_to_response`` both give the same).
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.config import VllmConfig
from vllm.outputs import PoolingRequestOutput
from vllm.plugins.io_processors.interface import IOProcessor
from vllm.pooling_params import PoolingParams

from vllm_plugin_chunked_embeddings._errors import ChunkedEmbeddingsRequestError
from vllm_plugin_chunked_embeddings.aggregate import l2_normalize, merge
from vllm_plugin_chunked_embeddings.chunking import (
    SLICE_CHARS,
    char_span,
    chunk_prompt,
    slicing_is_exact,
    special_tokens,
    tokenize_document,
    windows,
)
from vllm_plugin_chunked_embeddings.request import ChunkRequest, parse_request

#: Plans of requests between pre_process and post_process (requests that fail
#: in between leave theirs; the oldest go first past this count).
MAX_PENDING = 1024


@dataclass
class _Plan:
    """Per-chunk facts post_process needs, in compact arrays."""

    request: ChunkRequest
    doc_chunks: array = field(default_factory=lambda: array("i"))  # chunks sent per document
    doc_total_chunks: array = field(default_factory=lambda: array("i"))  # chunks the document makes
    doc_tokens: array = field(default_factory=lambda: array("q"))  # content tokens per document
    chunk_tokens: array = field(default_factory=lambda: array("i"))  # content tokens per chunk sent
    spans: array = field(default_factory=lambda: array("q"))  # start, end per chunk ("none" only)
    prompt_tokens: int = 0  # tokens sent, special tokens included


class ChunkedEmbeddingsProcessor(IOProcessor):
    """``--io-processor-plugin chunked_embeddings``."""

    def __init__(self, vllm_config: VllmConfig, renderer: Any = None) -> None:
        super().__init__(vllm_config, renderer)
        tokenizer = getattr(renderer, "tokenizer", None)
        if tokenizer is None and renderer is not None and hasattr(renderer, "get_tokenizer"):
            tokenizer = renderer.get_tokenizer()
        if tokenizer is None:
            raise ValueError(
                "chunked_embeddings needs the model's tokenizer (do not use skip_tokenizer_init)")
        if not getattr(tokenizer, "is_fast", True):
            raise ValueError(
                "chunked_embeddings needs a fast (Rust) Hugging Face tokenizer for character "
                f"offsets; this model's tokenizer is {type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self.max_model_len = int(vllm_config.model_config.max_model_len)
        self.prefix, self.suffix = special_tokens(tokenizer)
        self.num_special = len(self.prefix) + len(self.suffix)
        self.max_content_tokens = self.max_model_len - self.num_special
        self.slice_chars = SLICE_CHARS if slicing_is_exact(tokenizer) else None
        self._pending: OrderedDict[str | None, _Plan] = OrderedDict()
        self._lock = threading.Lock()

    # --- request ---

    def parse_data(self, data: object) -> ChunkRequest:
        return parse_request(data, max_content_tokens=self.max_content_tokens,
                             max_model_len=self.max_model_len, num_special_tokens=self.num_special)

    def merge_pooling_params(self, params: PoolingParams | None = None) -> PoolingParams:
        params = params if params is not None else PoolingParams()
        if params.task in (None, "plugin"):
            params.task = "embed"
        return params

    def pre_process(self, prompt: ChunkRequest, request_id: str | None = None,
                    **kwargs: Any) -> list[dict[str, list[int]]]:
        if not isinstance(prompt, ChunkRequest):  # a caller that skipped parse_data
            prompt = self.parse_data(prompt)
        req = prompt
        plan = _Plan(req)
        prompts: list[dict[str, list[int]]] = []
        keep_spans = req.aggregate == "none"
        only_first = req.aggregate == "cls_first"
        for i, text in enumerate(req.inputs):
            doc = tokenize_document(self.tokenizer, text, slice_chars=self.slice_chars)
            n = len(doc)
            if n == 0:
                where = "input" if req.single else f"input[{i}]"
                raise ChunkedEmbeddingsRequestError(
                    f"'{where}' produces no tokens; every input must contain some text",
                    parameter="input")
            sent = 0
            total = 0
            for start, end in windows(n, req.chunk_tokens, req.overlap_tokens):
                total += 1
                if only_first and total > 1:
                    continue
                prompts.append(chunk_prompt(doc, start, end, self.prefix, self.suffix))
                plan.chunk_tokens.append(end - start)
                plan.prompt_tokens += end - start + self.num_special
                if keep_spans:
                    plan.spans.extend(char_span(doc, start, end))
                sent += 1
            plan.doc_chunks.append(sent)
            plan.doc_total_chunks.append(total)
            plan.doc_tokens.append(n)
            del doc
        with self._lock:
            self._pending[request_id] = plan
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
        return prompts

    # --- response ---

    def post_process(self, model_output: Sequence[PoolingRequestOutput], request_id: str | None = None,
                     **kwargs: Any) -> dict[str, Any]:
        with self._lock:
            plan = self._pending.pop(request_id, None)
        if plan is None:
            raise RuntimeError(f"chunked_embeddings: no plan for request {request_id!r} "
                               "(post_process without pre_process, or evicted)")
        if len(model_output) != len(plan.chunk_tokens):
            raise RuntimeError(f"chunked_embeddings: {len(model_output)} outputs for "
                               f"{len(plan.chunk_tokens)} chunks")
        req = plan.request
        data: list[dict[str, Any]] = []
        pos = 0
        for d, k in enumerate(plan.doc_chunks):
            vectors = torch.stack([_vector(o) for o in model_output[pos:pos + k]])
            item: dict[str, Any] = {"index": d}
            if req.aggregate == "none":
                if req.normalize:
                    vectors = l2_normalize(vectors)
                item["chunks"] = [
                    {
                        "embedding": vectors[j].tolist(),
                        "span": [plan.spans[2 * (pos + j)], plan.spans[2 * (pos + j) + 1]],
                        "num_tokens": plan.chunk_tokens[pos + j],
                    }
                    for j in range(k)
                ]
            else:
                weights = plan.chunk_tokens[pos:pos + k]
                item["embedding"] = merge(vectors, weights, req.aggregate, req.normalize).tolist()
            item["num_chunks"] = plan.doc_total_chunks[d]
            item["num_tokens"] = plan.doc_tokens[d]
            data.append(item)
            pos += k
        return {
            "object": "list",
            "aggregate": req.aggregate,
            "data": data,
            "usage": {"prompt_tokens": plan.prompt_tokens, "total_tokens": plan.prompt_tokens},
        }


def _vector(output: PoolingRequestOutput) -> torch.Tensor:
    data = output.outputs.data
    if not isinstance(data, torch.Tensor):
        data = torch.as_tensor(data)
    return data.reshape(-1).to(torch.float32)
