"""Request schema and validation (pure: no vLLM, no torch).

Request data (the ``data`` field of ``POST /pooling``, or of the prompt given
to ``LLM.encode(..., pooling_task="plugin")``)::

    {
      "input": "text" | ["text", ...],      # required, non-empty strings
      "chunk_tokens": int,                   # content tokens per chunk; default: the most that fit
      "overlap_tokens": int,                 # default 0; 0 <= overlap < chunk_tokens
      "aggregate": "mean" | "max" | "cls_first" | "none",   # default "mean"
      "normalize": bool                      # default true
    }

``chunk_tokens`` counts content tokens only: the model's special tokens
(``[CLS] ... [SEP]``, ``<bos>``, ...) are added to every chunk on top, so the
largest allowed value is the model's max length minus the number of special
tokens, and that is also the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vllm_plugin_chunked_embeddings._errors import ChunkedEmbeddingsRequestError

AGGREGATES = ("mean", "max", "cls_first", "none")
FIELDS = ("input", "chunk_tokens", "overlap_tokens", "aggregate", "normalize")


@dataclass(frozen=True)
class ChunkRequest:
    inputs: tuple[str, ...]
    chunk_tokens: int
    overlap_tokens: int
    aggregate: str
    normalize: bool
    single: bool  # "input" was one string (the response is still a list)


def _fail(message: str, field: str) -> ChunkedEmbeddingsRequestError:
    return ChunkedEmbeddingsRequestError(message, parameter=field)


def _int_field(data: Mapping[str, object], field: str, default: int) -> int:
    value = data.get(field, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"'{field}' must be an integer; got {type(value).__name__} {value!r:.40}", field)
    return value


def parse_request(data: object, *, max_content_tokens: int, max_model_len: int | None = None,
                  num_special_tokens: int = 0) -> ChunkRequest:
    """Validate ``data``; raise :class:`ChunkedEmbeddingsRequestError` naming the field.

    ``max_content_tokens`` is the model's max length minus the special tokens
    added to each chunk (the largest and default ``chunk_tokens``).
    """
    if max_content_tokens < 1:
        raise _fail(
            f"the model's max length ({max_model_len}) leaves no room for content after its "
            f"{num_special_tokens} special tokens", "chunk_tokens")
    if not isinstance(data, Mapping):
        raise _fail(
            "the request 'data' must be an object with 'input' (a string or a list of strings) "
            f"and optional {', '.join(repr(f) for f in FIELDS[1:])}; got {type(data).__name__}", "data")
    unknown = sorted(str(k) for k in data if k not in FIELDS)
    if unknown:
        raise _fail(f"unknown field(s) {', '.join(repr(k) for k in unknown)}; "
                    f"allowed: {', '.join(repr(f) for f in FIELDS)}", unknown[0])

    if "input" not in data:
        raise _fail("'input' is required: a non-empty string or a non-empty list of non-empty strings",
                    "input")
    raw = data["input"]
    single = isinstance(raw, str)
    if single:
        items: list[object] = [raw]
    elif isinstance(raw, (list, tuple)):
        items = list(raw)
        if not items:
            raise _fail("'input' must not be an empty list: give at least one non-empty string", "input")
    else:
        raise _fail(f"'input' must be a string or a list of strings; got {type(raw).__name__}", "input")
    for i, item in enumerate(items):
        where = "input" if single else f"input[{i}]"
        if not isinstance(item, str):
            raise _fail(f"'{where}' must be a string; got {type(item).__name__}", "input")
        if not item:
            raise _fail(f"'{where}' is an empty string; every input must be a non-empty string", "input")

    limit_note = (f"the model's max length {max_model_len} minus its {num_special_tokens} special "
                  f"token(s) per chunk" if max_model_len is not None else "the model's limit")
    chunk = _int_field(data, "chunk_tokens", max_content_tokens)
    if not 1 <= chunk <= max_content_tokens:
        raise _fail(f"'chunk_tokens' must be between 1 and {max_content_tokens} ({limit_note}); "
                    f"got {chunk}", "chunk_tokens")
    overlap = _int_field(data, "overlap_tokens", 0)
    if not 0 <= overlap < chunk:
        raise _fail(f"'overlap_tokens' must be between 0 and chunk_tokens - 1 ({chunk - 1}); got {overlap}",
                    "overlap_tokens")

    aggregate = data.get("aggregate", "mean")
    if aggregate is None:
        aggregate = "mean"
    if not isinstance(aggregate, str) or aggregate not in AGGREGATES:
        raise _fail(f"'aggregate' must be one of {', '.join(repr(a) for a in AGGREGATES)}; "
                    f"got {aggregate!r:.40}", "aggregate")

    normalize = data.get("normalize", True)
    if normalize is None:
        normalize = True
    if not isinstance(normalize, bool):
        raise _fail(f"'normalize' must be true or false; got {type(normalize).__name__} {normalize!r:.40}",
                    "normalize")

    return ChunkRequest(tuple(items), chunk, overlap, aggregate, normalize, single)  # type: ignore[arg-type]
