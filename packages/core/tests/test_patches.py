"""Surgical patches on a real vLLM class: apply, revert, conflicts, env activation."""

from __future__ import annotations

import pytest

from vllm_plugin_core.patches import Patch, PatchConflictError, PatchError, PatchRegistry

TARGET = "vllm.sampling_params:SamplingParams"


@pytest.fixture
def registry():
    reg = PatchRegistry()
    yield reg
    reg.revert_all()


def test_apply_revert_replaced_and_added(registry):
    from vllm.sampling_params import SamplingParams

    before = SamplingParams.__repr__
    p = Patch("tagged-repr", TARGET, why="test")

    @p.replaces_attr("__repr__")
    def __repr__(self):
        return "patched:" + p.original("__repr__")(self)

    p.adds["plugin_tag"] = "hello"
    registry.register(p, apply_if_selected=False)
    assert registry.apply(["tagged-repr"]) == ["tagged-repr"]
    assert registry.is_applied("tagged-repr")
    assert repr(SamplingParams()).startswith("patched:SamplingParams(")
    assert SamplingParams.plugin_tag == "hello"
    assert registry.apply(["tagged-repr"]) == []  # idempotent
    assert repr(SamplingParams()).count("patched:") == 1

    assert registry.revert("tagged-repr") is True
    assert not registry.is_applied("tagged-repr")
    assert SamplingParams.__repr__ is before
    assert not hasattr(SamplingParams, "plugin_tag")
    assert registry.revert("tagged-repr") is False


def test_conflicting_patches_are_refused(registry):
    a = Patch("a", TARGET, replaces={"__repr__": lambda self: "a"})
    b = Patch("b", TARGET, replaces={"__repr__": lambda self: "b"})
    registry.register(a, apply_if_selected=False)
    registry.register(b, apply_if_selected=False)
    registry.apply(["a"])
    with pytest.raises(PatchConflictError, match="'a' and 'b' both replace __repr__ of " + TARGET):
        registry.apply(["b"])
    assert not registry.is_applied("b")


def test_errors_name_the_problem(registry):
    with pytest.raises(PatchError, match="unknown patch 'nope'"):
        registry.apply(["nope"])
    registry.register(Patch("missing-attr", TARGET, replaces={"no_such_method": None}), apply_if_selected=False)
    with pytest.raises(PatchError, match="has no attribute 'no_such_method'"):
        registry.apply(["missing-attr"])
    registry.register(Patch("bad-module", "vllm.no_such_module:X"), apply_if_selected=False)
    with pytest.raises(PatchError, match="cannot import 'vllm.no_such_module'"):
        registry.apply(["bad-module"])
    registry.register(Patch("adds-existing", TARGET, adds={"clone": None}), apply_if_selected=False)
    with pytest.raises(PatchError, match="already has 'clone'"):
        registry.apply(["adds-existing"])


def test_version_range_per_patch(registry):
    registry.register(Patch("future", TARGET, vllm=">=99", adds={"future_attr": 1}), apply_if_selected=False)
    assert registry.apply(["future"]) == []
    assert not registry.is_applied("future")


def test_activation_by_env(registry, monkeypatch):
    from vllm.sampling_params import SamplingParams

    monkeypatch.setenv("VLLM_PLUGIN_PATCHES", "env-one, other")
    registry.register(Patch("env-one", TARGET, adds={"env_one": 1}))
    assert registry.is_applied("env-one") and SamplingParams.env_one == 1
    registry.register(Patch("env-two", TARGET, adds={"env_two": 2}))
    assert not registry.is_applied("env-two")
    monkeypatch.setenv("VLLM_PLUGIN_PATCHES", "*")
    assert registry.apply_from_env() == ["env-two"]
