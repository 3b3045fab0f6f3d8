"""Test helpers for vLLM plugin authors (also a pytest plugin, ``pytest11``).

* :mod:`.models`: build small deterministic models offline, cached by content.
* :mod:`.server`: start ``vllm serve`` on a free loopback port and stop it.
* :mod:`.pytest_plugin`: fixtures built on both.
"""
