"""A plugin whose every entry point imports, and breaks its group's contract
(what a plugin built against another vLLM looks like to the running one)."""

#: The platform this package would declare; detection never activates it.
PLATFORM_PATH = "vpc_test_wrong_contract.PlainPlatform"


class PlainProcessor:
    """A logits processor that subclasses neither runner's LogitsProcessor."""


class PlainStatLogger:
    """A stat logger that is not a StatLoggerBase."""


class PlainPlatform:
    """A platform that is not a vllm.platforms.interface.Platform."""


def io_processor() -> str:
    """Returns the path of a class that is not an IOProcessor."""
    return "vpc_test_wrong_contract.PlainProcessor"


def detect() -> None:
    """Inactive here (so that vLLM never tries to activate the wrong platform)."""
    return None


class EndpointWithoutInitState:
    """An endpoint plugin without ``init_state``."""

    name = "test_wrong_endpoint"
    required_tasks = None

    def attach_router(self, app) -> None:
        pass


def _called(name: str) -> None:
    """Record a call in ``$VPC_TEST_CALLED_DIR`` (the doctor must not call a
    disabled entry point's function)."""
    import os
    from pathlib import Path

    folder = os.environ.get("VPC_TEST_CALLED_DIR")
    if folder:
        Path(folder, name).write_text("called")


def disabled_io_processor() -> str:
    _called("disabled_io_processor")
    return "vpc_no_such_module.Processor"


def disabled_detect() -> None:
    _called("disabled_detect")
    return None


def disabled_endpoint() -> object:
    _called("disabled_endpoint")
    return object()
