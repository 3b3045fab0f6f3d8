"""The error a bad request raises.

``POST /pooling`` turns it into HTTP 400 on every supported vLLM (0.31 to
0.34): the server's exception handlers map ``VLLMValidationError`` (a
``VLLMClientError``) to ``400 BadRequestError`` with ``param`` set to the
field, and keep ``ValueError`` as a 400 fallback. The class derives from both,
so it is a 400 through either handler, and offline ``LLM.encode`` callers can
catch it as a plain ``ValueError``.

``vllm.exceptions.VLLMValidationError`` exists throughout 0.31 to 0.34; the
fallback below only keeps this module importable where vLLM is absent (the
pure tests, documentation builds).
"""

from __future__ import annotations

try:  # vLLM present (always, where the processor runs)
    from vllm.exceptions import VLLMValidationError as _Base
except ImportError:  # pragma: no cover - exercised only without vLLM

    class _Base(ValueError):  # type: ignore[no-redef]
        def __init__(self, message: str, *, parameter: str | None = None, value: object = None) -> None:
            super().__init__(message)
            self.parameter = parameter
            self.value = value


class ChunkedEmbeddingsRequestError(_Base, ValueError):
    """A request the plugin refuses; ``parameter`` names the field."""

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        # ``value`` is never set: vLLM appends it to the message, and an input
        # can be megabytes long.
        super().__init__(message, parameter=parameter)
        self.message = message

    def __str__(self) -> str:
        # vLLM's base appends "(parameter=...)"; the message already names the field.
        return self.message
