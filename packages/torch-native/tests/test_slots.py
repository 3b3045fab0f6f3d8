"""The slot mapping in PyTorch (slots.py) against the definition, and on the
shape of vLLM's own ``BlockTable`` (no engine)."""

from __future__ import annotations

import pytest
import torch

from vllm_plugin_core.compat import standalone_cpu_runner_available
from vllm_plugin_torch_native import slots


def reference(qsl, positions, table, block_size, n_pad):
    out = []
    for r in range(len(qsl) - 1):
        for t in range(qsl[r], qsl[r + 1]):
            pos = int(positions[t])
            out.append(int(table[r, pos // block_size]) * block_size + pos % block_size)
    return out + [slots.PAD_SLOT_ID] * n_pad


def test_slot_mapping_matches_definition():
    g = torch.Generator().manual_seed(0)
    table = torch.randperm(40, generator=g).reshape(4, 10).to(torch.int32)
    # a prefill from position 0, a decode at 37, a chunk from 9, an empty request
    qsl = [0, 6, 7, 12, 12]
    positions = torch.tensor([0, 1, 2, 3, 4, 5, 37, 9, 10, 11, 12, 13, 0, 0])  # 2 padding tokens
    got = slots.slot_mapping(torch.tensor(qsl, dtype=torch.int32), positions, table, 4, block_size=4)
    assert got.dtype == torch.int64
    assert got.tolist() == reference(qsl, positions, table, 4, n_pad=2)


def test_kernel_blocks_inside_kv_manager_blocks():
    """vLLM 0.31 (and 0.29, 0.30 before it) split a KV-manager block of 8 tokens into 2 kernel blocks of 4."""
    table = torch.arange(20, dtype=torch.int32).reshape(1, 20)
    pos = torch.arange(20)
    got = slots.slot_mapping(torch.tensor([0, 20], dtype=torch.int32), pos, table, 1, block_size=4,
                             kv_block_size=8, blocks_per_kv_block=2)
    assert got.tolist() == list(range(20))  # identity table: slot == position


@pytest.mark.skipif(standalone_cpu_runner_available(),
                    reason="vLLM 0.34+ has no V1 BlockTable; there the runner's slot mapping is "
                           "cpu_ops.compute_slot_mapping_cpu (test_cpu_ops.py)")
def test_block_table_method_replaced_through_cores_patch_registry():
    from vllm.v1.worker.block_table import BlockTable

    from vllm_plugin_core.patches import REGISTRY

    before = BlockTable.compute_slot_mapping
    # an engine run earlier in this process (torch-native in the main process) may have applied it
    was_applied = slots.PATCH_NAME in REGISTRY.names() and REGISTRY.is_applied(slots.PATCH_NAME)
    try:
        assert "slots.compute_slot_mapping" in slots.install()
        assert BlockTable.compute_slot_mapping is slots.compute_slot_mapping
        assert REGISTRY.is_applied(slots.PATCH_NAME)
        original = REGISTRY.get(slots.PATCH_NAME).original("compute_slot_mapping")
        assert original is not slots.compute_slot_mapping
        if not was_applied:
            assert original is before
        slots.install()  # idempotent
        assert REGISTRY.revert(slots.PATCH_NAME)
        assert BlockTable.compute_slot_mapping is original
    finally:
        if was_applied:
            slots.install()
