"""vllm-plugin-core: shared utilities for vLLM plugins.

Importing this package imports only the standard library and ``packaging``;
functions that need vLLM import it lazily and raise
:class:`~vllm_plugin_core.version.VllmNotInstalledError` when it is missing.
"""

__version__ = "0.1.0"
