"""``vllm-plugins new``: every group generates a package whose own tests pass.

One package per group is generated into a temporary folder, installed
(``--no-deps``) into one ``--target`` folder, and the five generated ``tests/``
run in ONE pytest subprocess with that folder first on ``PYTHONPATH``: vLLM's
own loaders discover each entry point. No engine is started, but that test
imports vLLM and torch, so it is marked ``engine``; the other tests here are
pure logic.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from vllm_plugin_core import cli, scaffold
from vllm_plugin_core.testing.install import install_into
from vllm_plugin_core.version import SUPPORTED_VLLM


def test_groups_cover_vllm_plugin_groups():
    groups = {g.entry_group for g in scaffold.GROUPS.values()}
    assert groups == set(cli.GROUPS) - {"vllm.endpoint_plugins"}


@pytest.mark.parametrize("bad", ["Foo", "foo_bar", "-foo", "foo-", "foo--bar", "1foo", "", "foo bar",
                                 "vllm-plugin-foo", "föo"])
def test_bad_name_refused(tmp_path, bad, capsys):
    with pytest.raises(scaffold.ScaffoldError, match="not valid|prefix is added"):
        scaffold.generate(bad, "general", tmp_path)
    assert not any(tmp_path.iterdir())
    assert cli.main(["new", "--group", "general", "--dest", str(tmp_path), "--", bad]) == 2
    assert "vllm-plugins new: error:" in capsys.readouterr().err


def test_existing_folder_refused(tmp_path, capsys):
    (tmp_path / "foo").mkdir()
    (tmp_path / "foo" / "keep.txt").write_text("mine")
    with pytest.raises(scaffold.ScaffoldError, match="already exists"):
        scaffold.generate("foo", "general", tmp_path)
    assert cli.main(["new", "foo", "--group", "general", "--dest", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "foo").iterdir()] == ["keep.txt"]


def test_unknown_group_refused(tmp_path):
    with pytest.raises(scaffold.ScaffoldError, match="unknown group"):
        scaffold.generate("foo", "nope", tmp_path)


def test_generated_layout(tmp_path, capsys):
    assert cli.main(["new", "my-thing", "--group", "general", "--dest", str(tmp_path)]) == 0
    assert "vllm-plugin-my-thing" in capsys.readouterr().out
    root = tmp_path / "my-thing"
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert files == {
        "pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE",
        "src/vllm_plugin_my_thing/__init__.py", "src/vllm_plugin_my_thing/_settings.py",
        "src/vllm_plugin_my_thing/_entry.py", "tests/test_my_thing_discovery.py",
    }
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["name"] == "vllm-plugin-my-thing"
    assert project["dynamic"] == ["version"]
    assert project["dependencies"] == ["vllm-plugin-core"]
    assert project["optional-dependencies"]["vllm"] == [f"vllm{SUPPORTED_VLLM}"] == ["vllm>=0.31,<0.35"]
    assert project["entry-points"]["vllm.general_plugins"] == {"my_thing": "vllm_plugin_my_thing._entry:register"}
    assert project["entry-points"]["vllm_plugin_core.settings"] == {
        "my_thing": "vllm_plugin_my_thing._settings:SETTINGS"}
    assert meta["tool"]["uv"]["sources"] == {"vllm-plugin-core": {"workspace": True}}
    assert meta["build-system"]["build-backend"] == "hatchling.build"
    core_license = Path(scaffold.__file__).parents[2] / "LICENSE"
    if core_license.exists():  # a source checkout
        assert (root / "LICENSE").read_text() == core_license.read_text()
    for path in root.rglob("*"):
        if path.is_file():
            assert "{{" not in path.read_text(), path
    assert '__version__ = "0.1.0"' in (root / "src/vllm_plugin_my_thing/__init__.py").read_text()


def test_entry_modules_import_light(tmp_path):
    """The entry-point modules of general, platform and io_processor import no vLLM."""
    for i, group in enumerate(("general", "platform", "io_processor")):
        scaffold.generate(f"light{i}", group, tmp_path)
    code = (
        "import sys\n"
        "for i in range(3):\n"
        "    __import__(f'vllm_plugin_light{i}._entry')\n"
        "    __import__(f'vllm_plugin_light{i}._settings')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'torch'))\n"
        "assert not heavy, heavy\n"
    )
    paths = [str(tmp_path / f"light{i}" / "src") for i in range(3)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.engine
def test_every_group_generates_passing_package(tmp_path):
    pytest.importorskip("vllm")
    src = tmp_path / "src"
    roots = [scaffold.generate(f"gen-{group.replace('_', '-')}", group, src) for group in scaffold.GROUPS]
    target = tmp_path / "site"
    install_into(target, *roots)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VLLM_PLUGIN_") or k == "VLLM_PLUGIN_CACHE_DIR"}
    env.pop("VLLM_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
         "--rootdir", str(src), *(str(r / "tests") for r in roots)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "skipped" not in out.stdout, out.stdout[-3000:]
