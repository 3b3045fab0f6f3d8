"""A plugin whose guarded registration raises."""

from vllm_plugin_core.guard import plugin_entry_point


@plugin_entry_point("vpc-test-failing", fix="set VPC_TEST_FIXED=1")
def register():
    raise RuntimeError("the failing test plugin always fails")
