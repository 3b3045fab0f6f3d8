"""The engine run's op guard (_op_guard.py) records calls it must see (no engine)."""

from __future__ import annotations

import _op_guard
import torch

_lib = torch.library.Library("vpc_guard_test", "DEF")
_lib.define("twice(Tensor x) -> Tensor")
_lib.impl("twice", lambda x: x * 2, "CompositeExplicitAutograd")


def test_guard_records_calls_and_keeps_probes():
    _op_guard.install(("vpc_guard_test",))
    assert hasattr(torch.ops.vpc_guard_test, "twice")
    assert not hasattr(torch.ops.vpc_guard_test, "absent")  # probes answer as before
    out = torch.ops.vpc_guard_test.twice(torch.ones(2))
    torch.ops.vpc_guard_test.twice.default(torch.ones(1))  # an overload
    assert out.tolist() == [2.0, 2.0]
    assert _op_guard.report()["calls"] == {"vpc_guard_test::twice": 2}
