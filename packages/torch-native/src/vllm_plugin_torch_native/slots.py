"""Slot mapping of the paged KV cache in plain PyTorch.

vLLM computes, at every step, the KV-cache slot of each scheduled token with a
Triton kernel; its CPU platform swaps in a C++ op
(``torch.ops._C.compute_slot_mapping_kernel_impl``) that only vLLM's CPU build
has. :func:`compute_slot_mapping` replaces ``BlockTable.compute_slot_mapping``
(same signature on vLLM 0.31 to 0.33; 0.34 has no V1 BlockTable, see runner.py) in the processes where this platform is
active (:func:`install`), so the platform runs on any vLLM build.
"""

from __future__ import annotations

from typing import Any

import torch

#: vLLM's padding slot id (``PAD_SLOT_ID``): the attention write skips it.
PAD_SLOT_ID = -1


def slot_mapping(query_start_loc: torch.Tensor, positions: torch.Tensor, block_table: torch.Tensor,
                 num_reqs: int, block_size: int, kv_block_size: int | None = None,
                 blocks_per_kv_block: int = 1) -> torch.Tensor:
    """Slots ``[len(positions)]`` (int64) of tokens at ``positions``.

    Token ``t`` belongs to request ``r`` when ``query_start_loc[r] <= t <
    query_start_loc[r + 1]``; its slot is ``block_table[r, pos // block_size] *
    block_size + pos % block_size`` (with vLLM's split of a KV-manager block
    into ``blocks_per_kv_block`` kernel blocks of ``block_size`` tokens). Tokens
    past the last request get :data:`PAD_SLOT_ID`. No host sync, no loop.
    """
    n = positions.shape[0]
    token = torch.arange(n, device=positions.device)
    ends = query_start_loc[1:num_reqs + 1].to(torch.long)
    req = torch.searchsorted(ends, token, right=True)
    valid = req < num_reqs
    req = req.clamp_(max=max(num_reqs - 1, 0))
    pos = positions.to(torch.long)
    kv_block_size = kv_block_size or block_size
    kv_block, in_kv_block = torch.div(pos, kv_block_size, rounding_mode="floor"), pos % kv_block_size
    block_index = kv_block * blocks_per_kv_block + torch.div(in_kv_block, block_size, rounding_mode="floor")
    blocks = block_table[req, block_index].to(torch.long)
    slots = blocks * block_size + in_kv_block % block_size
    return torch.where(valid, slots, torch.full_like(slots, PAD_SLOT_ID))


def compute_slot_mapping(self: Any, num_reqs: int, query_start_loc: torch.Tensor,
                         positions: torch.Tensor) -> None:
    """``BlockTable.compute_slot_mapping`` without Triton or a C++ op."""
    mode = getattr(self, "slot_mapping_mode", None)
    if mode is not None and getattr(mode, "name", "") == "NONE":
        return  # Mamba-style groups use the block table as state indices
    n = positions.shape[0]
    out = self.slot_mapping.gpu
    if getattr(self, "dcp_world_size", 1) != 1:
        raise NotImplementedError("torch_native platform: decode context parallelism")
    out[:n] = slot_mapping(query_start_loc, positions, self.block_table.gpu, num_reqs,
                           self.block_size, getattr(self, "kv_cache_block_size", None),
                           getattr(self, "blocks_per_kv_block", 1))
    out[n:self.max_num_batched_tokens] = PAD_SLOT_ID


#: Name of the patch in core's registry (``vllm-plugins doctor`` lists it).
PATCH_NAME = "torch-native-slot-mapping"


def _patch() -> Any:
    from vllm_plugin_core.patches import REGISTRY, Patch

    if PATCH_NAME in REGISTRY.names():
        return REGISTRY.get(PATCH_NAME)
    patch = Patch(
        PATCH_NAME, "vllm.v1.worker.block_table:BlockTable",
        why=("vLLM's slot mapping is a Triton kernel, or on the CPU platform the C++ op "
             "torch.ops._C.compute_slot_mapping_kernel_impl that only vLLM's CPU build has; "
             "this platform computes it in PyTorch. Can go: when vLLM ships a PyTorch fallback."),
        replaces={"compute_slot_mapping": compute_slot_mapping},
    )
    return REGISTRY.register(patch, apply_if_selected=False)


def install() -> str:
    """Route vLLM's ``BlockTable.compute_slot_mapping`` to :func:`compute_slot_mapping`
    through core's patch registry (reversible with ``REGISTRY.revert``)."""
    from vllm_plugin_core.patches import REGISTRY

    _patch()
    REGISTRY.apply([PATCH_NAME])
    return f"patch {PATCH_NAME}: BlockTable.compute_slot_mapping -> torch_native slots.compute_slot_mapping"
