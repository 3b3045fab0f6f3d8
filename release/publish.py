"""Release ONE package: tag -> package -> version check -> build -> upload.

The one script behind ``.github/workflows/release.yml`` and
``nox -s publish_rehearsal`` (``release/rehearse.py``), so that the rehearsal
runs what a release runs::

    python release/publish.py prepare TAG --index-url URL [--out DIR]
    python release/publish.py check-index DIR --index-url URL
    python release/publish.py upload DIR --index-url URL --repository-url URL
    python release/publish.py release TAG --index-url URL --repository-url URL [--out DIR]
    python release/publish.py order

``prepare``: the tag ``<distribution>==<version>`` names a package folder under
``packages/`` whose ``__version__`` equals the version; its README has no
relative (or broken) link or image, since those break on the index's project
page; the index (``--index-url``, a PEP 503 simple index: PyPI's
``https://pypi.org/simple/`` in a release) does not have this version yet and
has every sibling distribution it depends on (``vllm-plugin-core`` first);
then the wheel and the sdist are built from the source tree into ``DIR``
(default ``dist``), ``twine check --strict`` and
``tests/packaging/check_wheels.py`` pass, and the sdist, built in isolation,
gives a wheel with the same files and contents (RECORD aside).
``check-index``: the index check again, for the files of ``DIR`` (the release
workflow runs it right before uploading). ``upload``: ``check-index``, then
``twine upload`` (the tool pypa/gh-action-pypi-publish runs; credentials from
``TWINE_USERNAME``/``TWINE_PASSWORD``, or PyPI trusted publishing).
``release``: ``prepare`` then ``upload``. ``order``: the release order of every
package (each after the siblings it depends on: core first).

Needs ``packaging`` and ``twine`` in the Python that runs it and ``uv`` on
PATH. Every failure ends with ONE line on stderr, ``release: ...``, that names
the fix, and exit status 1.
"""

from __future__ import annotations

import argparse
import html.parser
import json
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
#: Where README links into this repository point (their files on the default
#: branch), unless a package's pyproject ``[project.urls]`` declares a
#: ``Repository`` (or ``Source``) of its own. Change it here only.
REPOSITORY = "https://github.com/vllm-plugins/vllm-plugins"
BRANCH = "main"
#: A release tag: ``<distribution>==<version>``.
TAG = re.compile(r"(vllm-plugin-[a-z0-9-]+)==([0-9A-Za-z.+!-]+)")


class ReleaseError(Exception):
    """A release must not go on; the message is one line naming the fix."""


# ------------------------------------------------------------------ packages

def packages(root: Path = ROOT) -> dict[str, Path]:
    """{distribution name: package folder} of every package under ``root/packages``."""
    out = {}
    for pyproject in sorted((root / "packages").glob("*/pyproject.toml")):
        if not pyproject.parent.name.startswith("_"):
            out[tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"]] = pyproject.parent
    return out


def _project(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))


def parse_tag(tag: str) -> tuple[str, str]:
    """(distribution, version) of a release tag."""
    m = TAG.fullmatch(tag.strip())
    if not m:
        raise ReleaseError(f"tag {tag!r} is not <distribution>==<version>: "
                           "tag as the distribution and its __version__, e.g. vllm-plugin-stats==0.1.0")
    return m.group(1), m.group(2)


def find_package(dist: str, root: Path = ROOT) -> Path:
    found = packages(root)
    if dist not in found:
        raise ReleaseError(f"no folder under packages/ publishes {dist}: tag one of {', '.join(sorted(found))}")
    return found[dist]


def version_file(folder: Path) -> Path:
    """The file holding ``__version__`` (``[tool.hatch.version] path``)."""
    project = _project(folder)
    rel = project.get("tool", {}).get("hatch", {}).get("version", {}).get("path")
    if rel is None:
        name = project["project"]["name"].replace("-", "_")
        rel = f"src/{name}/__init__.py"
    return folder / rel


def package_version(folder: Path) -> str | None:
    path = version_file(folder)
    if not path.exists():
        return None
    m = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", path.read_text(encoding="utf-8"), re.M)
    return m.group(1) if m else None


def check_version(dist: str, version: str, folder: Path, root: Path = ROOT) -> None:
    """The tag's version is the package's ``__version__``."""
    found = package_version(folder)
    if found != version:
        where = version_file(folder).relative_to(root)
        raise ReleaseError(f"tag {dist}=={version} but {where} has __version__ = {found!r}: "
                           f"tag {dist}=={found} instead, or set __version__ = {version!r} there, "
                           "commit and tag that commit")


def sibling_requirements(requirements: list[str], siblings: set[str]) -> list:
    """The ``packaging`` Requirements of ``requirements`` on sibling
    distributions (no extras' markers: what every install pulls)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    names = {canonicalize_name(s) for s in siblings}
    out = []
    for raw in requirements:
        req = Requirement(raw)
        if canonicalize_name(req.name) in names and not (req.marker and "extra" in str(req.marker)):
            out.append(req)
    return out


def order(root: Path = ROOT) -> list[str]:
    """Every distribution, each after the siblings it depends on (core first)."""
    found = packages(root)
    deps = {dist: {r.name for r in sibling_requirements(_project(folder)["project"].get("dependencies", []),
                                                         set(found))}
            for dist, folder in found.items()}
    done: list[str] = []
    while len(done) < len(deps):
        ready = sorted(d for d in deps if d not in done and deps[d] <= set(done))
        if not ready:
            raise ReleaseError(f"packages depend on each other in a cycle: {sorted(set(deps) - set(done))}: "
                               "break the cycle, a plugin depends on vllm-plugin-core only")
        done += ready
    return done


# ------------------------------------------------------------------ README links

_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_INLINE_TARGET = re.compile(r"\]\(\s*(<[^>\n]*>|[^)\s]*)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*(<[^>\n]*>|\S+)")
_HTML_ATTR = re.compile(r"<(img|a|source)\b[^>]*?\b(src|href|srcset)\s*=\s*[\"']([^\"']*)[\"']", re.I)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def repository_url(folder: Path) -> str:
    """The repository README links point at: the package's ``[project.urls]``
    ``Repository`` (or ``Source``) if it declares one, else ``REPOSITORY``."""
    urls = {k.lower(): v for k, v in _project(folder)["project"].get("urls", {}).items()}
    return (urls.get("repository") or urls.get("source") or REPOSITORY).rstrip("/")


def _slug(heading: str) -> str:
    """GitHub's (and PyPI's renderer's) anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _is_image(line: str, close: int) -> bool:
    """Whether the ``](`` at ``close`` ends an image: its ``[`` follows a ``!``."""
    depth = 0
    for i in range(close, -1, -1):
        if line[i] == "]":
            depth += 1
        elif line[i] == "[":
            depth -= 1
            if depth == 0:
                return i > 0 and line[i - 1] == "!"
    return False


def readme_targets(text: str) -> list[tuple[int, str, bool]]:
    """(line number, target, is image) of every link and image of a Markdown
    README outside code: inline, reference definitions and HTML ``a``/``img``."""
    out: list[tuple[int, str, bool]] = []
    fenced = False
    for number, raw in enumerate(text.splitlines(), 1):
        if _FENCE.match(raw):
            fenced = not fenced
            continue
        if fenced:
            continue
        line = _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), raw)
        for m in _INLINE_TARGET.finditer(line):
            out.append((number, m.group(1).strip("<>"), _is_image(line, m.start())))
        m = _REFERENCE.match(line)
        if m:
            out.append((number, m.group(1).strip("<>"), False))
        for m in _HTML_ATTR.finditer(line):
            target = m.group(3).split()[0] if m.group(2).lower() == "srcset" and m.group(3).strip() else m.group(3)
            out.append((number, target, m.group(1).lower() in ("img", "source")))
    return out


def readme_anchors(text: str) -> set[str]:
    anchors: set[str] = set()
    fenced = False
    for raw in text.splitlines():
        if _FENCE.match(raw):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(raw)
        if m:
            slug, n = _slug(m.group(2)), 0
            while (slug if n == 0 else f"{slug}-{n}") in anchors:
                n += 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def readme_problems(folder: Path, root: Path = ROOT) -> list[str]:
    """One line per link or image of the package's README that does not work
    on the index's project page, each naming the fix: relative ones (with the
    absolute URL to write), ones into this repository that name no file, and
    ``#anchors`` that name no heading."""
    readme = folder / "README.md"
    rel_readme = readme.relative_to(root).as_posix()
    text = readme.read_text(encoding="utf-8")
    repo = repository_url(folder)
    anchors = readme_anchors(text)
    problems = []
    for number, target, image in readme_targets(text):
        what = "image" if image else "link"
        where = f"{rel_readme}:{number}: {what} {target!r}"
        if not target:
            problems.append(f"{where} is empty: give it a URL")
            continue
        if target.startswith("#"):
            if target[1:] not in anchors:
                problems.append(f"{where} names no heading of {rel_readme}: use the anchor of an existing heading")
            continue
        into_repo = re.match(rf"{re.escape(repo)}/(blob|tree|raw)/{re.escape(BRANCH)}/([^#?]*)", target)
        if into_repo:
            kind, path = into_repo.groups()
            path = urllib.parse.unquote(path).rstrip("/")
            if not (root / path).exists():
                problems.append(f"{where} names {path}, which is not in the repository: "
                                "point it at a file that exists")
            elif image and kind != "raw":
                problems.append(f"{where} is a page, not the image: write {repo}/raw/{BRANCH}/{path}")
            continue
        if _SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel_readme),
                                                     urllib.parse.unquote(path.split("?")[0])))
        if resolved.startswith("..") or not (root / resolved).exists():
            problems.append(f"{where} is relative (breaks on the index's project page) and names {resolved}, "
                            "which is not in the repository: link an absolute URL that exists")
            continue
        kind = "raw" if image else ("tree" if (root / resolved).is_dir() else "blob")
        absolute = f"{repo}/{kind}/{BRANCH}/{resolved}" + (f"#{anchor}" if anchor else "")
        problems.append(f"{where} is relative (breaks on the index's project page): write {absolute}")
    return problems


def check_readme(folder: Path, root: Path = ROOT) -> None:
    problems = readme_problems(folder, root)
    if problems:
        for line in problems[:-1]:
            print(f"release: {line}", file=sys.stderr)
        raise ReleaseError(problems[-1])


# ------------------------------------------------------------------ the index

class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.files: list[tuple[str, bool]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            a = dict(attrs)
            href = a.get("href") or ""
            name = urllib.parse.unquote(urllib.parse.urlsplit(href).path.rsplit("/", 1)[-1])
            self.files.append((name, "data-yanked" in a))


def index_versions(index_url: str, dist: str) -> list:
    """Versions of ``dist`` on a PEP 503/691 simple index (yanked files aside)."""
    from packaging.utils import (
        InvalidSdistFilename,
        InvalidWheelFilename,
        canonicalize_name,
        parse_sdist_filename,
        parse_wheel_filename,
    )

    url = f"{index_url.rstrip('/')}/{canonicalize_name(dist)}/"
    request = urllib.request.Request(url, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read().decode("utf-8")
            kind = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return []
        raise ReleaseError(f"{url} answered HTTP {e.code}: check --index-url ({index_url}) and that "
                           "the index is up") from None
    except (urllib.error.URLError, OSError) as e:
        raise ReleaseError(f"cannot read {url} ({e}): check --index-url ({index_url}) and that "
                           "the index is up") from None
    if "json" in kind:
        files = [(f["filename"], bool(f.get("yanked"))) for f in json.loads(body).get("files", [])]
    else:
        parser = _Links()
        parser.feed(body)
        files = parser.files
    versions = set()
    for name, yanked in files:
        try:
            if name.endswith(".whl"):
                found, version = parse_wheel_filename(name)[:2]
            elif name.endswith((".tar.gz", ".zip")):
                found, version = parse_sdist_filename(name)
            else:
                continue
        except (InvalidWheelFilename, InvalidSdistFilename):
            continue
        if not yanked and found == canonicalize_name(dist):
            versions.add(version)
    return sorted(versions)


def check_index(dist: str, version: str, requirements: list[str], index_url: str, root: Path = ROOT) -> None:
    """The index does not have ``dist`` ``version`` yet and has a release of
    every sibling it depends on: the release order (core first)."""
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    found = packages(root)
    if Version(version) in index_versions(index_url, dist):
        raise ReleaseError(f"{dist} {version} is already on {index_url} (an index never takes a version "
                           f"twice): set a new __version__ in {version_file(found[dist]).relative_to(root)} "
                           "and tag that")
    for req in sibling_requirements(requirements, set(found) - {dist}):
        available = index_versions(index_url, req.name)
        if any(req.specifier.contains(v, prereleases=True) for v in available):
            continue
        needs = f"{req.name}{req.specifier}" if req.specifier else f"{req.name} (any version)"
        has = f"has only {', '.join(map(str, available))}" if available else "has none"
        sibling = next(d for d in found if canonicalize_name(d) == canonicalize_name(req.name))
        ours = package_version(found[sibling])
        if ours and req.specifier.contains(ours, prereleases=True):
            step = f"push tag {sibling}=={ours} first"
        else:
            step = (f"set {sibling}'s __version__ to one matching {req.specifier}, release it first")
        raise ReleaseError(f"{dist} {version} needs {needs} but {index_url} {has}: release in order, "
                           f"core first ({' -> '.join(order(root))}): {step}, then release {dist} again")


# ------------------------------------------------------------------ build

def _run(what: str, cmd: list[str], fix: str) -> None:
    print("release: $ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise ReleaseError(f"{what} failed (its output is above): {fix}")


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        raise ReleaseError("uv is not on PATH: pip install 'uv>=0.5'")
    return uv


def _fresh(out: Path) -> None:
    if out.exists():
        strays = [p.name for p in out.iterdir()
                  if not p.name.endswith((".whl", ".tar.gz")) and p.name != ".gitignore"]  # uv build's
        if strays:
            raise ReleaseError(f"{out} holds more than built packages ({', '.join(sorted(strays)[:3])}): "
                               "give --out an empty or new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def built(out: Path) -> tuple[Path, Path]:
    """(wheel, sdist): the one of each in ``out``."""
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        raise ReleaseError(f"{out} holds wheels {[p.name for p in wheels]} and sdists {[p.name for p in sdists]}, "
                           "not one of each: prepare one package into an empty folder")
    return wheels[0], sdists[0]


def _wheel_files(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        return {n: z.read(n) for n in z.namelist()
                if not n.endswith("/") and not re.fullmatch(r"[^/]+\.dist-info/RECORD", n)}


def compare_sdist_wheel(wheel: Path, sdist: Path) -> None:
    """The sdist, built in isolation, gives a wheel with ``wheel``'s files and
    contents (RECORD aside, it holds their hashes)."""
    with tempfile.TemporaryDirectory(prefix="release-sdist-") as tmp:
        _run(f"building a wheel from {sdist.name}", [_uv(), "build", "-q", "--wheel", str(sdist), "--out-dir", tmp],
             f"{sdist.name} does not build: the sdist lacks a file the build needs "
             "([tool.hatch.build.targets.sdist])")
        again = next(Path(tmp).glob("*.whl"))
        ours, theirs = _wheel_files(wheel), _wheel_files(again)
    only_wheel, only_sdist = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
    differ = sorted(n for n in ours.keys() & theirs.keys() if ours[n] != theirs[n])
    if only_wheel or only_sdist or differ:
        raise ReleaseError(
            f"the wheel built from {sdist.name} differs from {wheel.name}: only in the wheel "
            f"{only_wheel[:5]}, only in the sdist's {only_sdist[:5]}, different {differ[:5]}: make the sdist "
            "carry every file the wheel has ([tool.hatch.build.targets.sdist] include/exclude)")
    print(f"release: the wheel built from {sdist.name} has the {len(ours)} files of {wheel.name}, same contents")


def build(folder: Path, out: Path, root: Path = ROOT) -> tuple[Path, Path]:
    """Wheel and sdist from the source tree into ``out``, checked."""
    _fresh(out)
    _run(f"uv build of {folder.relative_to(root)}",
         [_uv(), "build", "-q", "--sdist", "--wheel", str(folder), "--out-dir", str(out)],
         f"fix the build of {folder.relative_to(root)} (uv build prints why)")
    wheel, sdist = built(out)
    _run("twine check --strict",
         [sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
         "fix the metadata or README twine names (pip install twine if it is missing)")
    check_wheels = root / "tests" / "packaging" / "check_wheels.py"
    if check_wheels.exists():
        dist = _project(folder)["project"]["name"]
        _run("tests/packaging/check_wheels.py", [sys.executable, str(check_wheels), str(out), dist],
             "fix what check_wheels.py names")
    compare_sdist_wheel(wheel, sdist)
    return wheel, sdist


def wheel_metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist) of a wheel."""
    import email.parser

    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        meta = email.parser.Parser().parsestr(z.read(name).decode("utf-8"))
    return meta["Name"], meta["Version"], meta.get_all("Requires-Dist") or []


# ------------------------------------------------------------------ commands

def prepare(tag: str, out: Path, index_url: str, root: Path = ROOT) -> tuple[Path, Path]:
    dist, version = parse_tag(tag)
    folder = find_package(dist, root)
    check_version(dist, version, folder, root)
    print(f"release: {tag}: {folder.relative_to(root)}, __version__ {version}")
    check_readme(folder, root)
    print(f"release: {folder.relative_to(root)}/README.md has no relative or broken link or image")
    check_index(dist, version, _project(folder)["project"].get("dependencies", []), index_url, root)
    print(f"release: {index_url} has what {dist} {version} needs, and not {version} yet")
    wheel, sdist = build(folder, out, root)
    print(f"release: prepared {wheel.name} and {sdist.name} in {out}")
    return wheel, sdist


def check_built(out: Path, index_url: str, root: Path = ROOT) -> None:
    wheel, _ = built(out)
    name, version, requirements = wheel_metadata(wheel)
    check_index(name, version, requirements, index_url, root)
    print(f"release: {index_url} has what {name} {version} needs, and not {version} yet")


def upload(out: Path, index_url: str, repository_url: str, root: Path = ROOT) -> None:
    check_built(out, index_url, root)
    wheel, sdist = built(out)
    _run("twine upload", [sys.executable, "-m", "twine", "upload", "--non-interactive", "--disable-progress-bar",
          "--repository-url", repository_url, str(wheel), str(sdist)],
         f"fix what twine says about {repository_url} (credentials: TWINE_USERNAME/TWINE_PASSWORD)")
    print(f"release: uploaded {wheel.name} and {sdist.name} to {repository_url}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)  # tests: another tree
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "release"):
        p = sub.add_parser(name)
        p.add_argument("tag", help="<distribution>==<version>, e.g. vllm-plugin-stats==0.1.0")
        p.add_argument("--out", type=Path, default=Path("dist"), help="empty or new folder (default: dist)")
        p.add_argument("--index-url", required=True, help="simple index to check, e.g. https://pypi.org/simple/")
        if name == "release":
            p.add_argument("--repository-url", required=True, help="upload URL (twine --repository-url)")
    for name in ("check-index", "upload"):
        p = sub.add_parser(name)
        p.add_argument("out", type=Path, help="folder with one wheel and one sdist")
        p.add_argument("--index-url", required=True)
        if name == "upload":
            p.add_argument("--repository-url", required=True)
    sub.add_parser("order")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        if args.command == "order":
            print("\n".join(order(root)))
        elif args.command == "prepare":
            prepare(args.tag, args.out, args.index_url, root)
        elif args.command == "release":
            prepare(args.tag, args.out, args.index_url, root)
            upload(args.out, args.index_url, args.repository_url, root)
        elif args.command == "check-index":
            check_built(args.out, args.index_url, root)
        else:
            upload(args.out, args.index_url, args.repository_url, root)
    except ReleaseError as e:
        print(f"release: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
