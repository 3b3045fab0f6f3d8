"""The canary (issue 27): ``nox -s canary`` on the newest vLLM, run weekly by
.github/workflows/canary.yml, never by the test command."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _noxfile() -> ast.Module:
    return ast.parse((ROOT / "noxfile.py").read_text())


def _default_sessions(tree: ast.Module) -> list[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(ast.unparse(t) == "nox.options.sessions" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("noxfile.py sets no nox.options.sessions")


def test_canary_session_exists_and_is_not_a_default() -> None:
    tree = _noxfile()
    canary = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "canary"]
    assert canary, "noxfile.py has no canary session"
    assert any("nox.session" in ast.unparse(d) for d in canary[0].decorator_list)
    body = ast.unparse(canary[0])
    assert "ALLOW_UNTESTED_VLLM" in body and "_pytest(session" in body and "vllm-plugins" in body
    assert "canary" not in _default_sessions(tree)
    ci = next(line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "nox -s" in line)
    assert "canary" not in ci.split("nox -s", 1)[1].split(), "the canary is not part of the test command"


def test_canary_workflow_is_weekly_and_on_demand() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the workflows: pip install pyyaml")
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "canary.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    assert "workflow_dispatch" in triggers
    (cron,) = [entry["cron"] for entry in triggers["schedule"]]
    _minute, _hour, day, month, weekday = cron.split()
    assert (day, month) == ("*", "*") and weekday != "*", f"weekly, not {cron!r}"
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    runs = "\n".join(str(step.get("run", "")) for step in job["steps"])
    assert re.search(r"python -m nox -s canary\b", runs)
    setup = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/setup-python@"))
    assert str(setup["with"]["python-version"]) == "3.11"
    assert any(str(s.get("uses", "")).startswith("actions/cache@") and "uv" in str(s["with"]["path"])
               for s in job["steps"]), "uv's cache is kept between runs"
