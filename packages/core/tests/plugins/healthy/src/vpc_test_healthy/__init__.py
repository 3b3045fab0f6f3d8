"""A healthy general plugin: counts its registrations in VPC_TEST_COUNT_FILE."""

import os

from vllm_plugin_core.guard import plugin_entry_point


@plugin_entry_point("vpc-test-healthy")
def register():
    path = os.environ.get("VPC_TEST_COUNT_FILE")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
    return ["nothing real"]
