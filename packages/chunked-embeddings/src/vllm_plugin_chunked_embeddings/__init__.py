"""vllm-plugin-chunked-embeddings: embeddings of documents longer than the context,
as a vLLM IO processor plugin (``--io-processor-plugin chunked_embeddings``)."""

__version__ = "0.1.0"
