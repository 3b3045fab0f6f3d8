"""DRY sequence breakers are cut at 40 bytes of UTF-8, as llama.cpp
(``MAX_CHAR_LEN`` = 40 is applied with ``std::string::resize`` to the
breaker's bytes in ``llama_sampler_init_dry``), never inside a character."""

from __future__ import annotations

import pytest

from vllm_plugin_samplers.breakers import MAX_BYTES, Resolver, cut_breaker


@pytest.mark.parametrize(("breaker", "want"), [
    ("a" * 40, "a" * 40),
    ("a" * 41, "a" * 40),
    ("é" * 30, "é" * 20),  # 2 bytes each: 20 characters are 40 bytes
    ("a" * 39 + "é", "a" * 39),  # the 40th byte would split é: it goes whole
    ("a" * 38 + "😀x", "a" * 38),  # a 4-byte character across the cut
    ("a" * 36 + "😀x", "a" * 36 + "😀"),  # ends exactly at 40 bytes
    ("日本", "日本"),
])
def test_cut_on_bytes_without_splitting_a_character(breaker, want):
    got = cut_breaker(breaker)
    assert got == want
    assert len(got.encode()) <= MAX_BYTES


def test_resolution_uses_the_byte_cut():
    """A token holding the first 40 bytes of a long non-ASCII breaker is a
    breaker; with a cut at 40 characters (60 bytes here) it was not."""
    texts = ["x", "é" * 20, "é" * 25 + "!", "a" * 39 + "è", "é" * 19]
    resolver = Resolver(texts)
    assert resolver(["é" * 30]).single == {1, 2}
    assert resolver(["a" * 39 + "é"]).single == {3}
