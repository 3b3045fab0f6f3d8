"""Parsing of per-request sampler arguments."""

from __future__ import annotations

import pytest

from vllm_plugin_samplers.params import (
    DEFAULT_DRY_SEQUENCE_BREAKERS,
    DryParams,
    NgramParams,
    XtcParams,
    parse_dry,
    parse_ngram,
    parse_xtc,
)


@pytest.mark.parametrize("parse", [parse_ngram, parse_dry, parse_xtc])
def test_off_by_default(parse) -> None:
    assert parse(None) is None
    assert parse({}) is None
    assert parse({"unrelated": 1}) is None


@pytest.mark.parametrize("parse", [parse_ngram, parse_dry, parse_xtc])
def test_extra_args_not_a_dict(parse) -> None:
    with pytest.raises(ValueError, match="extra_args"):
        parse([1, 2])


# ---- ngram -------------------------------------------------------------------

def test_ngram_valid() -> None:
    assert parse_ngram({"no_repeat_ngram_size": 3}) == NgramParams(3)
    assert parse_ngram({"no_repeat_ngram_size": 1}) == NgramParams(1)
    assert parse_ngram({"no_repeat_ngram_size": None}) is None


@pytest.mark.parametrize("bad", [0, -1, True, False, 2.0, 2.5, "3", [3], 2**24 + 1, 2**31, 2**63])
def test_ngram_invalid(bad) -> None:
    with pytest.raises(ValueError, match=r"no_repeat_ngram_size must be an integer in \[1, 16777216\], got"):
        parse_ngram({"no_repeat_ngram_size": bad})


# ---- dry ---------------------------------------------------------------------

def test_dry_defaults() -> None:
    p = parse_dry({"dry_multiplier": 0.8})
    assert p == DryParams(multiplier=0.8)
    assert (p.base, p.allowed_length, p.penalty_last_n) == (1.75, 2, 0)
    assert p.sequence_breakers == DEFAULT_DRY_SEQUENCE_BREAKERS == ("\n", ":", '"', "*")


def test_dry_all_fields() -> None:
    p = parse_dry(
        {
            "dry_multiplier": 1,
            "dry_base": 2,
            "dry_allowed_length": 3,
            "dry_sequence_breakers": ["\n", "###"],
            "dry_penalty_last_n": -1,
        }
    )
    assert p == DryParams(1.0, 2.0, 3, ("\n", "###"), -1)
    assert isinstance(p.multiplier, float) and isinstance(p.base, float)


def test_dry_breakers_json_string() -> None:
    p = parse_dry({"dry_multiplier": 1.0, "dry_sequence_breakers": '["\\n", ":", "\\""]'})
    assert p.sequence_breakers == ("\n", ":", '"')
    p = parse_dry({"dry_multiplier": 1.0, "dry_sequence_breakers": "[]"})
    assert p.sequence_breakers == ()
    p = parse_dry({"dry_multiplier": 1.0, "dry_sequence_breakers": ("a",)})
    assert p.sequence_breakers == ("a",)


def test_dry_off() -> None:
    assert parse_dry({"dry_multiplier": 0}) is None
    assert parse_dry({"dry_multiplier": 0.0, "dry_base": 2.0}) is None
    assert parse_dry({"dry_multiplier": None}) is None
    assert parse_dry({"dry_base": 2.0}) is None


def test_dry_fields_validated_even_when_off() -> None:
    with pytest.raises(ValueError, match="dry_base"):
        parse_dry({"dry_base": 0.5})


@pytest.mark.parametrize(
    ("field", "bad", "message"),
    [
        ("dry_multiplier", -0.1, "dry_multiplier must be a number >= 0, got -0.1"),
        ("dry_multiplier", "1", "dry_multiplier must be a number >= 0, got '1'"),
        ("dry_multiplier", True, "dry_multiplier must be a number >= 0, got True"),
        ("dry_multiplier", float("nan"), "dry_multiplier must be a number >= 0, got nan"),
        ("dry_base", 0.5, "dry_base must be a number >= 1, got 0.5"),
        ("dry_base", 0.999, "dry_base must be a number >= 1, got 0.999"),
        ("dry_base", float("inf"), "dry_base must be a number >= 1, got inf"),
        ("dry_base", "2", "dry_base must be a number >= 1, got '2'"),
        ("dry_allowed_length", 2**24 + 1, "dry_allowed_length must be an integer in [1, 16777216], got 16777217"),
        ("dry_allowed_length", 2**31, "dry_allowed_length must be an integer in [1, 16777216], got 2147483648"),
        ("dry_penalty_last_n", 2**31, "dry_penalty_last_n must be an integer in [-1, 16777216], got 2147483648"),
        ("dry_penalty_last_n", 10**30, "dry_penalty_last_n must be an integer in [-1, 16777216], got 1"),
        ("dry_allowed_length", 0, "dry_allowed_length must be an integer in [1, 16777216], got 0"),
        ("dry_allowed_length", 2.5, "dry_allowed_length must be an integer in [1, 16777216], got 2.5"),
        ("dry_allowed_length", 2.0, "dry_allowed_length must be an integer in [1, 16777216], got 2.0"),
        ("dry_allowed_length", True, "dry_allowed_length must be an integer in [1, 16777216], got True"),
        ("dry_penalty_last_n", -2, "dry_penalty_last_n must be an integer in [-1, 16777216], got -2"),
        ("dry_penalty_last_n", "64", "dry_penalty_last_n must be an integer in [-1, 16777216], got '64'"),
        ("dry_sequence_breakers", "\n", "dry_sequence_breakers must be a list of non-empty"),
        ("dry_sequence_breakers", "x, y", "dry_sequence_breakers must be a list of non-empty"),
        ("dry_sequence_breakers", '"x", ""', "dry_sequence_breakers must be a list of non-empty"),
        ("dry_sequence_breakers", [1], "dry_sequence_breakers must be a list of non-empty"),
        ("dry_sequence_breakers", [""], "dry_sequence_breakers must be a list of non-empty"),
        ("dry_sequence_breakers", "[1]", "dry_sequence_breakers must be a list of non-empty"),
        ("dry_sequence_breakers", {"a": 1}, "dry_sequence_breakers must be a list of non-empty"),
    ],
)
def test_dry_invalid(field, bad, message) -> None:
    args = {"dry_multiplier": 0.8, field: bad}
    with pytest.raises(ValueError) as info:
        parse_dry(args)
    assert str(info.value).startswith(message)
    assert field in str(info.value)


def test_dry_valid_edges() -> None:
    assert parse_dry({"dry_multiplier": 0.8, "dry_penalty_last_n": 0}).penalty_last_n == 0
    assert parse_dry({"dry_multiplier": 0.8, "dry_penalty_last_n": 512}).penalty_last_n == 512
    assert parse_dry({"dry_multiplier": 0.8, "dry_allowed_length": 1}).allowed_length == 1
    assert parse_dry({"dry_multiplier": 0.8, "dry_base": 1.0001}).base == 1.0001
    assert parse_dry({"dry_multiplier": 0.8, "dry_base": 1}).base == 1.0  # a flat penalty, as llama.cpp
    assert parse_dry({"dry_multiplier": 0.8, "dry_penalty_last_n": 2**24}).penalty_last_n == 2**24


# ---- xtc ---------------------------------------------------------------------

def test_xtc_valid() -> None:
    assert parse_xtc({"xtc_threshold": 0.1, "xtc_probability": 0.5}) == XtcParams(0.1, 0.5)
    assert parse_xtc({"xtc_threshold": 0.5, "xtc_probability": 1}) == XtcParams(0.5, 1.0)
    # Above 0.5 at most one token reaches the threshold: accepted, as llama.cpp and webui, and a no-op.
    assert parse_xtc({"xtc_threshold": 0.9, "xtc_probability": 1}) == XtcParams(0.9, 1.0)
    assert parse_xtc({"xtc_threshold": 0.001, "xtc_probability": 1}) == XtcParams(0.001, 1.0)
    assert parse_xtc({"xtc_threshold": 0.1, "xtc_probability": 0}) is None
    assert parse_xtc({"xtc_probability": 0.0}) is None
    assert parse_xtc({"xtc_threshold": None, "xtc_probability": None}) is None


def test_xtc_threshold_defaults_to_0_1_as_llama_cpp_and_webui() -> None:
    with pytest.raises(ValueError, match="xtc_probability is needed"):
        parse_xtc({"xtc_threshold": 0.1})
    assert parse_xtc({"xtc_probability": 0.5}) == XtcParams(0.1, 0.5)


def test_dry_breakers_webui_comma_separated() -> None:
    """text-generation-webui sends the list's items without brackets."""
    p = parse_dry({"dry_multiplier": 1.0, "dry_sequence_breakers": '"\\n", ":", "\\"", "*"'})
    assert p.sequence_breakers == ("\n", ":", '"', "*")
    assert parse_dry({"dry_multiplier": 1.0, "dry_sequence_breakers": '"Alice:"'}).sequence_breakers == ("Alice:",)


@pytest.mark.parametrize(
    ("field", "bad", "message"),
    [
        ("xtc_threshold", 0, r"xtc_threshold must be a number in [0.001, 1], got 0"),
        ("xtc_threshold", 1.5, r"xtc_threshold must be a number in [0.001, 1], got 1.5"),
        ("xtc_threshold", 1e-300, r"xtc_threshold must be a number in [0.001, 1], got 1e-300"),
        ("xtc_threshold", -0.1, r"xtc_threshold must be a number in [0.001, 1], got -0.1"),
        ("xtc_threshold", "0.1", r"xtc_threshold must be a number in [0.001, 1], got '0.1'"),
        ("xtc_threshold", True, r"xtc_threshold must be a number in [0.001, 1], got True"),
        ("xtc_probability", 1.5, r"xtc_probability must be a number in [0, 1], got 1.5"),
        ("xtc_probability", -0.5, r"xtc_probability must be a number in [0, 1], got -0.5"),
        ("xtc_probability", "1", r"xtc_probability must be a number in [0, 1], got '1'"),
        ("xtc_probability", float("nan"), r"xtc_probability must be a number in [0, 1], got nan"),
    ],
)
def test_xtc_invalid(field, bad, message) -> None:
    args = {"xtc_threshold": 0.1, "xtc_probability": 0.5, field: bad}
    with pytest.raises(ValueError) as info:
        parse_xtc(args)
    assert str(info.value) == message


def test_params_are_frozen() -> None:
    p = NgramParams(2)
    with pytest.raises(AttributeError):
        p.size = 3  # type: ignore[misc]


def test_breaker_count_is_bounded():
    from vllm_plugin_samplers.params import MAX_DRY_SEQUENCE_BREAKERS

    ok = [f"b{i}" for i in range(MAX_DRY_SEQUENCE_BREAKERS)]
    assert len(parse_dry({"dry_multiplier": 1.0, "dry_sequence_breakers": ok}).sequence_breakers) == len(ok)
    with pytest.raises(ValueError, match="at most 32 breakers, got 33"):
        parse_dry({"dry_multiplier": 1.0, "dry_sequence_breakers": [*ok, "x"]})


def test_ngram_window_and_whitelist() -> None:
    p = parse_ngram({"no_repeat_ngram_size": 3, "no_repeat_ngram_window": 90, "no_repeat_ngram_whitelist": [7, 9, 7]})
    assert (p.size, p.window, p.whitelist) == (3, 90, frozenset({7, 9}))
    assert parse_ngram({"no_repeat_ngram_size": 3, "no_repeat_ngram_whitelist": "[1, 2]"}).whitelist == {1, 2}
    assert parse_ngram({"no_repeat_ngram_size": 2}).window == 0


@pytest.mark.parametrize(("args", "message"), [
    ({"no_repeat_ngram_window": 5}, "no_repeat_ngram_window is set but no_repeat_ngram_size is needed too"),
    ({"no_repeat_ngram_size": 2, "no_repeat_ngram_window": -1}, "no_repeat_ngram_window must be an integer in [0,"),
    ({"no_repeat_ngram_size": 2, "no_repeat_ngram_window": 2**31}, "no_repeat_ngram_window must be an integer in"),
    ({"no_repeat_ngram_size": 2, "no_repeat_ngram_whitelist": [-1]}, "no_repeat_ngram_whitelist must be a list"),
    ({"no_repeat_ngram_size": 2, "no_repeat_ngram_whitelist": ["a"]}, "no_repeat_ngram_whitelist must be a list"),
    ({"no_repeat_ngram_size": 2, "no_repeat_ngram_whitelist": 5}, "no_repeat_ngram_whitelist must be a list"),
    ({"no_repeat_ngram_size": 2, "no_repeat_ngram_whitelist": list(range(257))},
     "no_repeat_ngram_whitelist may hold at most 256 token ids, got 257"),
])
def test_ngram_window_and_whitelist_invalid(args, message) -> None:
    with pytest.raises(ValueError) as info:
        parse_ngram(args)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(("value", "message"), [
    ("[" * 100_000, "dry_sequence_breakers may be at most 16384 characters of JSON"),
    ("[" * 5000, "dry_sequence_breakers is nested too deeply"),
    (["\ud800"], "dry_sequence_breakers must be valid Unicode text (no lone surrogates)"),
    (["a\x00"], "dry_sequence_breakers may not contain NUL characters"),
])
def test_hostile_breakers_are_value_errors(value, message) -> None:
    """Found by a hostile review: a RecursionError (HTTP 500), and strings the
    vocabulary index cannot hold (NUL matched every token)."""
    with pytest.raises(ValueError) as info:
        parse_dry({"dry_multiplier": 1.0, "dry_sequence_breakers": value})
    assert str(info.value).startswith(message), str(info.value)


def test_xtc_guard_and_greedy_flags() -> None:
    """``xtc_eos_newline_guard`` (default on) and ``xtc_under_greedy`` (default
    off) as booleans, 1 / 0 (what JSON ``true`` becomes in ``vllm_xargs``) or strings."""
    p = parse_xtc({"xtc_probability": 0.5})
    assert (p.eos_newline_guard, p.under_greedy) == (True, False)
    for on, off in ((True, False), (1, 0), ("true", "false"), ("1", "0"), (" True", "FALSE")):
        p = parse_xtc({"xtc_probability": 0.5, "xtc_eos_newline_guard": off, "xtc_under_greedy": on})
        assert (p.eos_newline_guard, p.under_greedy) == (False, True), (on, off)
    assert parse_xtc({"xtc_probability": 0, "xtc_under_greedy": True}) is None


@pytest.mark.parametrize(("args", "message"), [
    ({"xtc_probability": 0.5, "xtc_under_greedy": 2}, "xtc_under_greedy must be true or false (or 1 / 0), got 2"),
    ({"xtc_probability": 0.5, "xtc_eos_newline_guard": "no"},
     "xtc_eos_newline_guard must be true or false (or 1 / 0), got 'no'"),
    ({"xtc_probability": 0.5, "xtc_under_greedy": 1.0}, "xtc_under_greedy must be true or false"),
    ({"xtc_under_greedy": True}, "xtc_under_greedy is set but xtc_probability is needed too"),
    ({"xtc_threshold": 0.2, "xtc_eos_newline_guard": False},
     "xtc_threshold, xtc_eos_newline_guard is set but xtc_probability is needed too"),
])
def test_xtc_flags_invalid(args, message) -> None:
    with pytest.raises(ValueError) as info:
        parse_xtc(args)
    assert str(info.value).startswith(message), str(info.value)
