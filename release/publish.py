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
``packages/`` whose ``__version__`` equals the version (a PEP 440 one); it
depends on no sibling plugin (``vllm-plugin-core`` only); its README, as
readme_renderer[md] renders it (else as a regex reads it), has no relative
(or broken) link or image, since those break on the index's project page;
the index (``--index-url``, a PEP 503 simple index: PyPI's
``https://pypi.org/simple/`` in a release) does not have this version yet,
yanked or not, and has every sibling distribution it depends on
(``vllm-plugin-core`` first); then the wheel and the sdist are built from the
source tree into ``DIR`` (default ``dist``), their metadata name the tag's
distribution and version, the wheel holds every git-tracked file under the
package's ``src/``, ``twine check --strict`` and
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


#: ``__version__ = "..."`` as hatchling's version source reads it (a plain
#: assignment; an annotated ``__version__: str = ...`` it does not read).
_VERSION_LINE = re.compile(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", re.M)
_ANNOTATED_VERSION = re.compile(r"^__version__\s*:[^=\n]*=\s*[\"']([^\"']+)[\"']", re.M)


def package_version(folder: Path) -> str | None:
    path = version_file(folder)
    if not path.exists():
        return None
    m = _VERSION_LINE.search(path.read_text(encoding="utf-8"))
    return m.group(1) if m else None


def _pep440(version: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        Version(version)
    except InvalidVersion:
        return False
    return True


def check_version(dist: str, version: str, folder: Path, root: Path = ROOT) -> None:
    """The tag's version is the package's ``__version__``, a PEP 440 version."""
    path = version_file(folder)
    where = path.relative_to(root)
    if not path.exists():
        raise ReleaseError(f"{where} does not exist: point [tool.hatch.version] path in "
                           f"{folder.relative_to(root)}/pyproject.toml at the file holding __version__")
    found = package_version(folder)
    if found is None:
        annotated = _ANNOTATED_VERSION.search(path.read_text(encoding="utf-8"))
        hint = (f" (hatchling does not read the annotated `__version__: ... = {annotated.group(1)!r}`)"
                if annotated else "")
        raise ReleaseError(f"no `__version__ = \"...\"` line found in {where}{hint}: write "
                           f"`__version__ = \"{version}\"` there, commit and tag that commit")
    if found != version:
        raise ReleaseError(f"tag {dist}=={version} but {where} has __version__ = {found!r}: "
                           f"tag {dist}=={found} instead, or set __version__ = {version!r} there, "
                           "commit and tag that commit")
    if not _pep440(version):
        raise ReleaseError(f"{where} has __version__ = {version!r}, not a PEP 440 version (an index refuses "
                           "it): set a version such as 0.1.0, 0.2.0rc1 or 0.1.0.post1 there, commit and tag "
                           "that commit")


def sibling_plugin_dependencies(folder: Path, root: Path = ROOT) -> list[str]:
    """The requirements of the package (dependencies and every extra) on a
    sibling plugin: any ``vllm-plugin-*`` but core and itself."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    project = _project(folder)["project"]
    own = canonicalize_name(project["name"])
    raw = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        raw += extra
    out = []
    for line in raw:
        try:
            name = canonicalize_name(Requirement(line).name)
        except InvalidRequirement:
            continue  # the build says why
        if name.startswith("vllm-plugin-") and name not in (own, "vllm-plugin-core"):
            out.append(line)
    return out


def check_dependencies(dist: str, folder: Path, root: Path = ROOT) -> None:
    """A plugin depends on no sibling plugin: installing it alone brings in
    itself and vllm-plugin-core only."""
    found = sibling_plugin_dependencies(folder, root)
    if found:
        raise ReleaseError(f"{dist} depends on sibling plugins {found} ({folder.relative_to(root)}/pyproject.toml): "
                           "a plugin depends on vllm-plugin-core only; move what they share into core, or drop "
                           "the requirement")


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

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_INLINE_TARGET = re.compile(r"\]\(\s*(<[^>\n]*>|[^)\s]*)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*(<[^>\n]*>|\S+)")
_HTML_TAG = re.compile(r"<(img|a|source)\b([^>]*)>?", re.I)
_HTML_ATTR = re.compile(r"""\b(src|href|srcset)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.I)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
#: What comrak (readme_renderer's Markdown renderer) puts before heading ids.
_ID_PREFIX = "user-content-"
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


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


def _srcset(value: str) -> list[str]:
    """The URL of every candidate of a ``srcset`` (``a.png 1x, b.png 2x``)."""
    return [c.split()[0] for c in value.split(",") if c.strip()]


def _code_lines(text: str) -> list[bool]:
    """Per line: whether it belongs to a fenced code block (its fences
    included). A fence closes with its own character, at least as long."""
    out, fence = [], None
    for raw in text.splitlines():
        m = _FENCE.match(raw)
        if fence is None:
            if m and not (m.group(1)[0] == "`" and "`" in raw[m.end():]):
                fence = m.group(1)
            out.append(fence is not None)
        else:
            out.append(True)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not raw[m.end():].strip():
                fence = None
    return out


def readme_targets(text: str) -> list[tuple[int, str, bool]]:
    """(line number, target, is image) of every link and image of a Markdown
    README outside code: inline, reference definitions and HTML ``a``/``img``/
    ``source`` on one line. The fallback when readme_renderer[md] is missing
    (``rendered_targets`` sees what this misses: reference-style images,
    HTML tags across lines)."""
    out: list[tuple[int, str, bool]] = []
    for number, (raw, code) in enumerate(zip(text.splitlines(), _code_lines(text), strict=True), 1):
        if code:
            continue
        line = _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), raw)
        for m in _INLINE_TARGET.finditer(line):
            out.append((number, m.group(1).strip("<>"), _is_image(line, m.start())))
        m = _REFERENCE.match(line)
        if m:
            out.append((number, m.group(1).strip("<>"), False))
        for tag in _HTML_TAG.finditer(line):
            for a in _HTML_ATTR.finditer(tag.group(2)):
                value = next(v for v in a.groups()[1:] if v is not None)
                for target in _srcset(value) if a.group(1).lower() == "srcset" else [value]:
                    out.append((number, target, tag.group(1).lower() in ("img", "source")))
    return out


def readme_anchors(text: str) -> set[str]:
    anchors: set[str] = set()
    for raw, code in zip(text.splitlines(), _code_lines(text), strict=True):
        m = None if code else _HEADING.match(raw)
        if m:
            slug, n = _slug(m.group(2)), 0
            while (slug if n == 0 else f"{slug}-{n}") in anchors:
                n += 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def render_readme(text: str) -> str | None:
    """The README as HTML by readme_renderer's Markdown renderer (the index's,
    GitHub flavoured), before its sanitizer (which would drop ``srcset``), with
    source positions where the renderer gives them; None without
    ``readme_renderer[md]``."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from readme_renderer import markdown
    except ImportError:
        return None
    try:
        import comrak
    except ImportError:
        comrak = None
    if comrak is not None and hasattr(markdown, "gfm_extension_options"):
        options = comrak.RenderOptions()
        options.unsafe_ = True
        options.sourcepos = True
        return comrak.render_markdown(text, extension_options=markdown.gfm_extension_options,
                                      render_options=options)
    variant = getattr(markdown, "variants", {}).get("GFM")
    return variant(text) if variant else None


class _Rendered(html.parser.HTMLParser):
    """Every href, src and srcset candidate of a rendered README, with the
    source lines (``data-sourcepos``) of the element or its innermost block."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[tuple[int, int] | None, str, bool]] = []
        self.ids: set[str] = set()
        self._stack: list[tuple[str, tuple[int, int] | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        m = re.match(r"(\d+):\d+-(\d+):\d+", a.get("data-sourcepos", ""))
        pos = (int(m.group(1)), int(m.group(2))) if m else None
        where = pos or next((p for _, p in reversed(self._stack) if p), None)
        for key in ("id", "name"):
            if a.get(key):
                self.ids.add(a[key].removeprefix(_ID_PREFIX))
        generated = tag == "a" and "anchor" in a.get("class", "").split()  # a heading's own link
        for name, value in attrs:
            if name == "href" and not generated:
                self.found.append((where, value or "", False))
            elif name == "src":
                self.found.append((where, value or "", True))
            elif name == "srcset":
                self.found += [(where, t, True) for t in _srcset(value or "")] or [(where, "", True)]
        if tag not in _VOID:
            self._stack.append((tag, pos))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID and self._stack and self._stack[-1][0] == tag:
            self._stack.pop()

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                return


def rendered_targets(text: str, rendered: str) -> tuple[list[tuple[int, str, bool]], set[str]]:
    """(line number, target, is image) of every href, src and srcset
    candidate of the rendered README, sorted by line, and the ids (anchors)
    of the page. A target's line: within its element's (or block's) source
    lines, the one that holds it, else the reference definition that does,
    else the next line after the previous target's that does."""
    parser = _Rendered()
    parser.feed(rendered)
    lines = text.splitlines()

    def find(target: str, first: int, last: int) -> int | None:
        return next((n for n in range(max(first, 1), min(last, len(lines)) + 1) if target in lines[n - 1]), None)

    out, cursor = [], 1
    for where, target, image in parser.found:
        number = None
        if target:
            # raw HTML (no source position): the next line from the previous target's that holds it
            number = find(target, *where) if where else find(target, cursor, len(lines))
            if number is None:  # a reference link or image: its definition's line
                number = next((n for n, line in enumerate(lines, 1)
                               if _REFERENCE.match(line) and target in line), None)
            if number is None and where is None:
                number = find(target, 1, len(lines))
        number = number or (where[0] if where else cursor)
        if not _REFERENCE.match(lines[number - 1] if 0 < number <= len(lines) else ""):
            cursor = number
        out.append((number, target, image))
    return sorted(out, key=lambda t: t[0]), parser.ids


def readme_problems(folder: Path, root: Path = ROOT, render: bool | None = None) -> list[str]:
    """One line per link or image of the package's README that does not work
    on the index's project page, each naming the fix: relative ones (with the
    absolute URL to write), ones into this repository that name no file, and
    ``#anchors`` that name no heading. Every href, src and srcset of the page
    readme_renderer[md] renders (``render``: None when it is installed, True
    always, False never); without it, what ``readme_targets`` finds."""
    readme = folder / "README.md"
    rel_readme = readme.relative_to(root).as_posix()
    text = readme.read_text(encoding="utf-8")
    repo = repository_url(folder)
    page = render_readme(text) if render is not False else None
    if render and page is None:
        raise ReleaseError("readme_renderer[md] cannot render: pip install 'readme_renderer[md]'")
    if page is None:
        targets, anchors = readme_targets(text), readme_anchors(text)
    else:
        targets, anchors = rendered_targets(text, page)
    problems = []
    for number, target, image in targets:
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


def index_versions(index_url: str, dist: str, yanked: bool = False) -> list:
    """Versions of ``dist`` on a PEP 503/691 simple index: those of its files
    not yanked (PEP 592: what an install may pick), with ``yanked`` of every
    file (what the index holds: it refuses a file name it ever had)."""
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
    for name, is_yanked in files:
        try:
            if name.endswith(".whl"):
                found, version = parse_wheel_filename(name)[:2]
            elif name.endswith((".tar.gz", ".zip")):
                found, version = parse_sdist_filename(name)
            else:
                continue
        except (InvalidWheelFilename, InvalidSdistFilename):
            continue
        if (yanked or not is_yanked) and found == canonicalize_name(dist):
            versions.add(version)
    return sorted(versions)


def check_index(dist: str, version: str, requirements: list[str], index_url: str, root: Path = ROOT) -> None:
    """The index does not have ``dist`` ``version`` yet and has a release of
    every sibling it depends on: the release order (core first)."""
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    found = packages(root)
    if not _pep440(version):
        raise ReleaseError(f"{dist} {version!r} is not a PEP 440 version (an index refuses it): set a version "
                           "such as 0.1.0 in __version__, commit and tag that commit")
    if Version(version) in index_versions(index_url, dist, yanked=True):
        yanked = "" if Version(version) in index_versions(index_url, dist) else " (yanked, which still holds it)"
        raise ReleaseError(f"{dist} {version} is already on {index_url}{yanked} (an index never takes a version "
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


def sdist_metadata(sdist: Path) -> tuple[str, str]:
    """(name, version) of an sdist's PKG-INFO."""
    import email.parser
    import tarfile

    with tarfile.open(sdist) as tf:
        member = next((m for m in tf.getmembers() if re.fullmatch(r"[^/]+/PKG-INFO", m.name)), None)
        if member is None:
            raise ReleaseError(f"{sdist.name} has no PKG-INFO: rebuild it with uv build")
        meta = email.parser.Parser().parsestr(tf.extractfile(member).read().decode("utf-8"))  # type: ignore[union-attr]
    return meta["Name"], meta["Version"]


def check_built_identity(wheel: Path, sdist: Path, dist: str, version: str, folder: Path,
                         root: Path = ROOT) -> None:
    """The wheel's METADATA and the sdist's PKG-INFO name the tag's
    distribution and version (normalized): what the build made is what the tag says."""
    from packaging.utils import canonicalize_name, canonicalize_version

    want = (canonicalize_name(dist), canonicalize_version(version))
    for path, (name, got) in ((wheel, wheel_metadata(wheel)[:2]), (sdist, sdist_metadata(sdist))):
        if (canonicalize_name(name or ""), canonicalize_version(got or "")) != want:
            raise ReleaseError(
                f"the build made {path.name} with Name {name} and Version {got}, not the tag's {dist} {version}: "
                f"let {folder.relative_to(root)}/pyproject.toml take name {dist!r} and its version from "
                f"__version__ only (no static `version = ...` under [project]: dynamic = [\"version\"], "
                "[tool.hatch.version] path), then tag that commit")
    print(f"release: {wheel.name} and {sdist.name} are {dist} {version}, as tagged")


#: Files that may be tracked under src/ yet are never packaged.
_JUNK = re.compile(r"(^|/)__pycache__/|\.py[co]$|(^|/)\.DS_Store$")


def tracked_files(folder: Path) -> list[str] | None:
    """The git-tracked files under ``folder/src`` (relative to ``src``),
    or None when ``folder`` is not in a git checkout (or git is missing)."""
    try:
        inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=folder,
                                capture_output=True, text=True)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        listed = subprocess.run(["git", "ls-files", "-z", "--", "src"], cwd=folder,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return sorted(p[len("src/"):] for p in listed.stdout.split("\0")
                  if p.startswith("src/") and (folder / p).is_file())


def check_tracked_in_wheel(folder: Path, wheel: Path, root: Path = ROOT) -> None:
    """Every git-tracked file under ``src/`` (``__pycache__``-style junk aside)
    is in the wheel: hatch leaves out, silently, what .gitignore ignores (a
    folder named ``build/``, for one) and what an exclude names."""
    tracked = tracked_files(folder)
    src = f"{folder.relative_to(root)}/src"
    if tracked is None:
        print(f"release: note: {folder.relative_to(root)} is not in a git checkout: not checked that every "
              f"git-tracked file under {src}/ is in {wheel.name}")
        return
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    missing = [p for p in tracked if not _JUNK.search(p) and p not in names]
    if missing:
        shown = ", ".join(f"{src}/{p}" for p in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                                                 else "")
        raise ReleaseError(
            f"git tracks {shown} but {wheel.name} lacks it: hatch leaves out what .gitignore ignores "
            "(a folder named build/, dist/...) and what an exclude names: list it in "
            f"{folder.relative_to(root)}/pyproject.toml [tool.hatch.build.targets.wheel] artifacts (and the "
            "sdist's), or un-ignore it in .gitignore (!path), or stop tracking it (git rm --cached)")
    print(f"release: {wheel.name} has every one of the {len(tracked)} git-tracked files under {src}/")


def build(folder: Path, out: Path, root: Path = ROOT, tag: tuple[str, str] | None = None) -> tuple[Path, Path]:
    """Wheel and sdist from the source tree into ``out``, checked; with
    ``tag`` (distribution, version), they must be that."""
    _fresh(out)
    _run(f"uv build of {folder.relative_to(root)}",
         [_uv(), "build", "-q", "--sdist", "--wheel", str(folder), "--out-dir", str(out)],
         f"fix the build of {folder.relative_to(root)} (uv build prints why)")
    wheel, sdist = built(out)
    if tag is not None:
        check_built_identity(wheel, sdist, *tag, folder, root)
    check_tracked_in_wheel(folder, wheel, root)
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
    check_dependencies(dist, folder, root)
    check_readme(folder, root)
    print(f"release: {folder.relative_to(root)}/README.md has no relative or broken link or image")
    check_index(dist, version, _project(folder)["project"].get("dependencies", []), index_url, root)
    print(f"release: {index_url} has what {dist} {version} needs, and not {version} yet")
    wheel, sdist = build(folder, out, root, (dist, version))
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
