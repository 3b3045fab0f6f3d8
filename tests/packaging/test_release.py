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
                        lambda url, dist, yanked=False: sorted(Version(v) for v in held.get(dist, [])))


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


# ------------------------------------------------------------------ versions that cannot go out

def _no_index() -> list[str]:
    return ["--index-url", "http://127.0.0.1:9/simple/", "--out", "/nonexistent/never-made"]


def test_version_that_is_not_pep440_is_one_line(tmp_path: Path) -> None:
    pkg = _foo_tree(tmp_path)
    (pkg / "src" / "vllm_plugin_foo" / "__init__.py").write_text('__version__ = "0.1.0-foo"\n')
    line = _one_line_failure(_cli("prepare", "vllm-plugin-foo==0.1.0-foo", *_no_index(), root=tmp_path))
    assert line == ("release: packages/foo/src/vllm_plugin_foo/__init__.py has __version__ = '0.1.0-foo', not a "
                    "PEP 440 version (an index refuses it): set a version such as 0.1.0, 0.2.0rc1 or 0.1.0.post1 "
                    "there, commit and tag that commit")


def test_annotated_version_is_named(tmp_path: Path) -> None:
    """hatchling's version source reads ``__version__ = "..."`` only: the
    annotated form is named, not reported as ``None``."""
    pkg = _foo_tree(tmp_path)
    (pkg / "src" / "vllm_plugin_foo" / "__init__.py").write_text('__version__: str = "0.1.0"\n')
    line = _one_line_failure(_cli("prepare", "vllm-plugin-foo==0.1.0", *_no_index(), root=tmp_path))
    assert line == ('release: no `__version__ = "..."` line found in packages/foo/src/vllm_plugin_foo/__init__.py '
                    "(hatchling does not read the annotated `__version__: ... = '0.1.0'`): write "
                    '`__version__ = "0.1.0"` there, commit and tag that commit')


def test_plugin_depending_on_a_sibling_plugin_is_refused(tmp_path: Path) -> None:
    """Before the index is asked (port 9): installing a plugin alone must bring
    in core only."""
    _foo_tree(tmp_path, deps='"vllm-plugin-core", "vllm-plugin-bar>=0.1"')
    line = _one_line_failure(_cli("prepare", "vllm-plugin-foo==0.1.0", *_no_index(), root=tmp_path))
    assert line == ("release: vllm-plugin-foo depends on sibling plugins ['vllm-plugin-bar>=0.1'] "
                    "(packages/foo/pyproject.toml): a plugin depends on vllm-plugin-core only; move what they "
                    "share into core, or drop the requirement")


def test_no_package_depends_on_a_sibling_plugin() -> None:
    for dist, folder in publish.packages().items():
        assert publish.sibling_plugin_dependencies(folder) == [], dist


@pytest.fixture
def static_index(tmp_path: Path):
    """A PEP 503 simple index of static files under ``tmp_path / 'simple'``
    (http.server on loopback): what a test writes there, it serves."""
    import functools
    import http.server
    import threading

    folder = tmp_path / "simple"
    folder.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_yanked_version_is_taken(static_index) -> None:
    """PEP 592: a yanked file is still the index's; it refuses the file name."""
    folder, url = static_index
    (folder / CORE).mkdir()
    (folder / CORE / "index.html").write_text(
        '<!DOCTYPE html><html><body>\n'
        '<a href="../../packages/vllm_plugin_core-0.1.0.tar.gz#sha256=00" data-yanked="broken">'
        'vllm_plugin_core-0.1.0.tar.gz</a>\n'
        '<a href="../../packages/vllm_plugin_core-0.0.9-py3-none-any.whl">vllm_plugin_core-0.0.9-py3-none-any.whl</a>\n'
        "</body></html>\n")
    assert [str(v) for v in publish.index_versions(url, CORE)] == ["0.0.9"]
    assert [str(v) for v in publish.index_versions(url, CORE, yanked=True)] == ["0.0.9", "0.1.0"]
    with pytest.raises(publish.ReleaseError, match=r"^vllm-plugin-core 0\.1\.0 is already on http.* \(yanked, which "
                                                   r"still holds it\) \(an index never takes a version twice\): "
                                                   r"set a new __version__"):
        publish.check_index(CORE, "0.1.0", [], url)


needs_uv = pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv on PATH (nox installs it)")


@needs_uv
def test_static_version_in_pyproject_is_refused_after_the_build(tmp_path: Path, static_index) -> None:
    """``__version__`` agrees with the tag but pyproject's static ``version``
    is what the build uses: the built metadata disagree with the tag."""
    _, url = static_index  # empty: core is not there yet
    _foo_tree(tmp_path / "repo")
    pyproject = tmp_path / "repo" / "packages" / "core" / "pyproject.toml"
    text = pyproject.read_text().replace('dynamic = ["version"]', 'version = "0.2.0"')
    pyproject.write_text(text.replace('[tool.hatch.version]\npath = "src/vllm_plugin_core/__init__.py"\n', ""))
    line = _one_line_failure(_cli("prepare", f"{CORE}==0.1.0", "--index-url", url, "--out", str(tmp_path / "d"),
                                  root=tmp_path / "repo"))
    [wheel] = (tmp_path / "d").glob("*.whl")
    assert line == (f"release: the build made {wheel.name} with Name vllm-plugin-core "
                    "and Version 0.2.0, not the tag's vllm-plugin-core 0.1.0: let packages/core/pyproject.toml take "
                    "name 'vllm-plugin-core' and its version from __version__ only (no static `version = ...` under "
                    '[project]: dynamic = ["version"], [tool.hatch.version] path), then tag that commit')


@needs_uv
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_tracked_file_missing_from_the_wheel(tmp_path: Path) -> None:
    """A folder named build/ under src/: git tracks it (added with -f), hatch
    leaves it out of the wheel since .gitignore ignores it."""
    repo = tmp_path / "repo"
    pkg = _foo_tree(repo)
    (repo / ".gitignore").write_text("build/\n__pycache__/\n")
    (pkg / "src" / "vllm_plugin_foo" / "build").mkdir()
    (pkg / "src" / "vllm_plugin_foo" / "build" / "recipe.txt").write_text("needed at run time\n")
    (pkg / "src" / "vllm_plugin_foo" / "__pycache__").mkdir()
    (pkg / "src" / "vllm_plugin_foo" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-f", "."], cwd=repo, check=True)
    out = tmp_path / "dist"
    subprocess.run(["uv", "build", "-q", "--wheel", str(pkg), "--out-dir", str(out)], check=True)
    [wheel] = out.glob("*.whl")
    with pytest.raises(publish.ReleaseError) as info:
        publish.check_tracked_in_wheel(pkg, wheel, repo)
    assert str(info.value) == (
        f"git tracks packages/foo/src/vllm_plugin_foo/build/recipe.txt but {wheel.name} lacks it: hatch leaves out "
        "what .gitignore ignores (a folder named build/, dist/...) and what an exclude names: list it in "
        "packages/foo/pyproject.toml [tool.hatch.build.targets.wheel] artifacts (and the sdist's), or un-ignore "
        "it in .gitignore (!path), or stop tracking it (git rm --cached)")
    subprocess.run([*git, "rm", "-q", "--cached", "packages/foo/src/vllm_plugin_foo/build/recipe.txt"],
                   cwd=repo, check=True)
    publish.check_tracked_in_wheel(pkg, wheel, repo)  # the rest is there; __pycache__ is junk


@needs_uv
def test_tracked_files_check_is_skipped_outside_git(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pkg = _foo_tree(tmp_path / "repo")
    subprocess.run(["uv", "build", "-q", "--wheel", str(pkg), "--out-dir", str(tmp_path / "d")], check=True)
    [wheel] = (tmp_path / "d").glob("*.whl")
    if publish.tracked_files(pkg) is not None:
        pytest.skip("the temporary folder is inside a git checkout")
    publish.check_tracked_in_wheel(pkg, wheel, tmp_path / "repo")
    assert "is not in a git checkout: not checked" in capsys.readouterr().out


def test_this_checkout_lists_tracked_sources() -> None:
    tracked = publish.tracked_files(publish.packages()[CORE])
    if tracked is None:
        pytest.skip("not a git checkout")
    assert "vllm_plugin_core/__init__.py" in tracked


# ------------------------------------------------------------------ the rehearsal checks what it claims

def _rehearse():
    return _load("_rehearse_under_test", ROOT / "release" / "rehearse.py")


def test_rehearsal_refuses_anything_but_plugin_and_core() -> None:
    rehearse = _rehearse()
    before = {"vllm": "vllm==0.32.0", "torch": "torch==2.13.0"}
    ok = {**before, "vllm-plugin-foo": "vllm-plugin-foo==0.1.0", CORE: f"{CORE}==0.1.0"}
    assert rehearse.unexpected_changes("vllm-plugin-foo", before, ok, set()) is None
    sibling = {**ok, "vllm-plugin-bar": "vllm-plugin-bar==0.1.0"}
    assert rehearse.unexpected_changes("vllm-plugin-foo", before, sibling, set()) == (
        "vllm-plugin-foo: installing it by name added ['vllm-plugin-bar==0.1.0', 'vllm-plugin-core==0.1.0', "
        "'vllm-plugin-foo==0.1.0'], expected exactly ['vllm-plugin-core', 'vllm-plugin-foo'] (plus new [] from "
        "noxfile.py's INSTALL_ALONE_ALLOWS): a plugin depends on vllm-plugin-core only")
    assert rehearse.unexpected_changes("vllm-plugin-foo", before, sibling, {"vllm-plugin-bar"}) is None
    no_core = {**before, "vllm-plugin-foo": "vllm-plugin-foo==0.1.0"}
    assert "expected exactly" in rehearse.unexpected_changes("vllm-plugin-foo", before, no_core, set())
    upgraded = {**ok, "torch": "torch==2.14.0"}
    assert rehearse.unexpected_changes("vllm-plugin-foo", before, upgraded, set()) == (
        "vllm-plugin-foo: installing it changed what vLLM's environment had: ['torch==2.13.0 -> torch==2.14.0']")
    assert isinstance(rehearse.install_alone_allows(), dict)


def test_rehearsal_runs_the_release_workflow_steps_in_its_order() -> None:
    """prepare, check-index, upload: separate runs, as release.yml's build job
    (prepare) and publish job (check-index, then the upload) do."""
    rehearse = _rehearse()
    steps = rehearse.release_steps(CORE, "0.1.0", rehearse.Index("http://127.0.0.1:1"), Path("out"))
    assert [cmd[2] for cmd in steps] == ["prepare", "check-index", "upload"]
    workflow = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    where = [workflow.index("release/publish.py prepare"), workflow.index("release/publish.py check-index"),
             workflow.index("pypa/gh-action-pypi-publish@")]
    assert where == sorted(where)


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
