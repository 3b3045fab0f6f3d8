"""A plugin whose entry-point module cannot be imported."""

import vpc_test_module_that_does_not_exist  # noqa: F401


def register():
    pass
