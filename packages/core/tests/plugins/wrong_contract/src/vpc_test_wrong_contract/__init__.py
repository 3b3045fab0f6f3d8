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
