"""release/publish.py, the script a release and ``nox -s publish_rehearsal``
run: each way a release goes wrong fails with ONE line naming the fix.

The tag/version, README and index-order rules run everywhere (pure logic, or a
stand-in index); the tests marked ``index`` upload to a real pypiserver on
loopback and run where pypiserver and twine are installed (``nox -s
publish_rehearsal`` runs this file first). No engine, no network."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PUBLISH = ROOT / "release" / "publish.py"


def _load(name: str, path: Path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


publish = _load("_publish_under_test", PUBLISH)
CORE = "vllm-plugin-core"
VERSIONS = {d: publish.package_version(f) for d, f in publish.packages().items()}


def _cli(*args: str, root: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(PUBLISH), *(["--root", str(root)] if root else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _one_line_failure(proc: subprocess.CompletedProcess) -> str:
    """The failure line: exit status 1, no traceback, the last stderr line."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("release: "), proc.stderr
    return lines[-1]


# ------------------------------------------------------------------ tag and version

def test_parse_tag() -> None:
    assert publish.parse_tag("vllm-plugin-stats==0.2.0rc1") == ("vllm-plugin-stats", "0.2.0rc1")
    for bad in ("vllm-plugin-stats-0.2.0", "v0.2.0", "vllm-plugin-stats==", "stats==0.2.0"):
        with pytest.raises(publish.ReleaseError, match="is not <distribution>==<version>: tag as"):
            publish.parse_tag(bad)


def test_tag_and_version_disagree() -> None:
    """Fails before anything is built or the index is asked (port 9: nothing listens)."""
    line = _one_line_failure(_cli("prepare", "vllm-plugin-stats==9.9.9", "--index-url", "http://127.0.0.1:9/simple/",
                                  "--out", "/nonexistent/never-made"))
    have = VERSIONS["vllm-plugin-stats"]
    assert line == (f"release: tag vllm-plugin-stats==9.9.9 but packages/stats/src/vllm_plugin_stats/__init__.py "
                    f"has __version__ = {have!r}: tag vllm-plugin-stats=={have} instead, or set __version__ = "
                    "'9.9.9' there, commit and tag that commit")


def test_unknown_distribution() -> None:
    line = _one_line_failure(_cli("prepare", "vllm-plugin-nope==0.1.0", "--index-url", "http://127.0.0.1:9/simple/"))
    assert line.startswith("release: no folder under packages/ publishes vllm-plugin-nope: tag one of ")
    assert CORE in line


def test_order_is_core_first() -> None:
    order = publish.order()
    assert order[0] == CORE and sorted(order) == sorted(publish.packages())
    proc = _cli("order")
    assert proc.returncode == 0 and proc.stdout.split() == order


# ------------------------------------------------------------------ README links

def _foo_tree(root: Path, readme: str = "# foo\n", deps: str = '"vllm-plugin-core"') -> Path:
    for name, version in (("core", "0.1.0"), ("foo", "0.1.0")):
        pkg = root / "packages" / name
        src = pkg / "src" / f"vllm_plugin_{name}"
        src.mkdir(parents=True)
        (src / "__init__.py").write_text(f'__version__ = "{version}"\n')
        (src / "data.txt").write_text("packaged data\n")
        (pkg / "README.md").write_text(readme if name == "foo" else "# core\n")
        (pkg / "LICENSE").write_text("Apache-2.0\n")
        (pkg / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["hatchling>=1.25"]\nbuild-backend = "hatchling.build"\n\n'
            f'[project]\nname = "vllm-plugin-{name}"\ndynamic = ["version"]\nreadme = "README.md"\n'
            f'dependencies = [{deps if name == "foo" else ""}]\n\n'
            f'[tool.hatch.version]\npath = "src/vllm_plugin_{name}/__init__.py"\n\n'
            f'[tool.hatch.build.targets.wheel]\npackages = ["src/vllm_plugin_{name}"]\n')
    return root / "packages" / "foo"


def test_broken_readme_link_fails_the_release(tmp_path: Path) -> None:
    _foo_tree(tmp_path, "# foo\n\nPart of [the plugins](../../README.md).\n")
    (tmp_path / "README.md").write_text("# repo\n")
    line = _one_line_failure(_cli("prepare", "vllm-plugin-foo==0.1.0", "--index-url", "http://127.0.0.1:9/simple/",
                                  root=tmp_path))
    assert line == ("release: packages/foo/README.md:3: link '../../README.md' is relative (breaks on the index's "
                    f"project page): write {publish.REPOSITORY}/blob/main/README.md")


# ------------------------------------------------------------------ the index: order and versions

def _stand_in_index(monkeypatch: pytest.MonkeyPatch, held: dict[str, list[str]]) -> None:
    from packaging.version import Version

    monkeypatch.setattr(publish, "index_versions",
                        lambda url, dist: sorted(Version(v) for v in held.get(dist, [])))


def test_missing_core_names_the_release_order(monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in_index(monkeypatch, {})
    with pytest.raises(publish.ReleaseError) as info:
        publish.check_index("vllm-plugin-stats", "0.1.0", ["vllm-plugin-core", "packaging"], "IDX")
    assert str(info.value) == (
        "vllm-plugin-stats 0.1.0 needs vllm-plugin-core (any version) but IDX has none: release in order, "
        f"core first ({' -> '.join(publish.order())}): push tag {CORE}=={VERSIONS[CORE]} first, then release "
        "vllm-plugin-stats again")


def test_too_old_core_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in_index(monkeypatch, {CORE: ["0.0.1"]})
    with pytest.raises(publish.ReleaseError, match=r"needs vllm-plugin-core>=99 but IDX has only 0\.0\.1: "
                                                   r"release in order, core first .*: set vllm-plugin-core's "
                                                   r"__version__ to one matching >=99, release it first"):
        publish.check_index("vllm-plugin-stats", "0.1.0", ["vllm-plugin-core>=99"], "IDX")


def test_core_there_and_extras_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in_index(monkeypatch, {CORE: ["0.1.0"]})
    publish.check_index("vllm-plugin-stats", "0.1.0",
                        ["vllm-plugin-core", 'vllm-plugin-samplers ; extra == "all"'], "IDX")


def test_version_already_on_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in_index(monkeypatch, {CORE: ["0.1.0"]})
    with pytest.raises(publish.ReleaseError, match=r"^vllm-plugin-core 0\.1\.0 is already on IDX .*: set a new "
                                                   r"__version__ in packages/core/src/vllm_plugin_core/__init__\.py"):
        publish.check_index(CORE, "0.1.0", [], "IDX")


# ------------------------------------------------------------------ the sdist builds the same wheel

@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv on PATH (nox installs it)")
def test_sdist_that_builds_another_wheel_fails(tmp_path: Path) -> None:
    pkg = _foo_tree(tmp_path / "repo")
    with open(pkg / "pyproject.toml", "a") as f:
        f.write('\n[tool.hatch.build.targets.sdist]\nexclude = ["src/vllm_plugin_foo/data.txt"]\n')
    out = tmp_path / "dist"
    subprocess.run(["uv", "build", "-q", "--sdist", "--wheel", str(pkg), "--out-dir", str(out)], check=True)
    wheel, sdist = publish.built(out)
    with pytest.raises(publish.ReleaseError) as info:
        publish.compare_sdist_wheel(wheel, sdist)
    assert str(info.value) == (
        f"the wheel built from {sdist.name} differs from {wheel.name}: only in the wheel "
        "['vllm_plugin_foo/data.txt'], only in the sdist's [], different []: make the sdist carry every file "
        "the wheel has ([tool.hatch.build.targets.sdist] include/exclude)")


# ------------------------------------------------------------------ a real index (pypiserver)

def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_index = pytest.mark.skipif(
    not (_has("pypiserver") and _has("twine") and shutil.which("uv")),
    reason="needs pypiserver, twine and uv: runs in nox -s publish_rehearsal")


@pytest.fixture
def index(tmp_path: Path):
    rehearse = _load("_rehearse_under_test", ROOT / "release" / "rehearse.py")
    with rehearse.local_index(tmp_path / "index") as idx:
        yield idx, tmp_path / "index"


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "TWINE_USERNAME": "test", "TWINE_PASSWORD": "test"}


@needs_index
def test_plugin_alone_on_an_empty_index_names_the_release_order(index, tmp_path: Path) -> None:
    """The plugin released (uploaded) alone to an empty index: refused before
    anything is uploaded, naming the order. Then core goes up (twine, to the
    index's upload URL), the index serves byte for byte the wheel built, and
    core's files checked again before an upload (the release workflow's
    publish job does) are refused: that version is there now."""
    idx, packages_dir = index
    plugin = "vllm-plugin-samplers"
    proc = _cli("release", f"{plugin}=={VERSIONS[plugin]}", "--out", str(tmp_path / "p"),
                "--index-url", idx.simple, "--repository-url", idx.url, env=_env())
    line = _one_line_failure(proc)
    assert line == (f"release: {plugin} {VERSIONS[plugin]} needs {CORE} (any version) but {idx.simple} has none: "
                    f"release in order, core first ({' -> '.join(publish.order())}): push tag "
                    f"{CORE}=={VERSIONS[CORE]} first, then release {plugin} again")
    assert list(packages_dir.iterdir()) == [], "nothing may reach the index"

    out = tmp_path / "c"
    proc = _cli("release", f"{CORE}=={VERSIONS[CORE]}", "--out", str(out),
                "--index-url", idx.simple, "--repository-url", idx.url, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheel, sdist = publish.built(out)
    assert sorted(p.name for p in packages_dir.iterdir()) == sorted([wheel.name, sdist.name])
    assert [str(v) for v in publish.index_versions(idx.simple, CORE)] == [VERSIONS[CORE]]
    import urllib.request

    with urllib.request.urlopen(f"{idx.url}/packages/{wheel.name}", timeout=30) as r:
        assert r.read() == wheel.read_bytes()

    line = _one_line_failure(_cli("check-index", str(out), "--index-url", idx.simple))
    assert line.startswith(f"release: {CORE} {VERSIONS[CORE]} is already on {idx.simple}")
