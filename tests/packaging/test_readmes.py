"""Package READMEs render on the package index's project page: no relative link
or image (they break there), no link to a file this repository lacks, no
``#anchor`` without its heading. The rules are release/publish.py's
``readme_problems``, which every release (and ``nox -s publish_rehearsal``) runs.
Pure logic: no engine, no network."""

from __future__ import annotations

import html.parser
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _publish():
    if "_publish_under_test" not in sys.modules:
        spec = importlib.util.spec_from_file_location("_publish_under_test", ROOT / "release" / "publish.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["_publish_under_test"]


publish = _publish()
REPO = publish.REPOSITORY
PACKAGES = publish.packages()


@pytest.mark.parametrize("dist", sorted(PACKAGES))
def test_package_readme_has_no_relative_or_broken_link(dist: str) -> None:
    problems = publish.readme_problems(PACKAGES[dist])
    assert not problems, "\n".join(problems)


def _tree(tmp_path: Path, readme: str, urls: str = "") -> Path:
    """A repository with one package, ``packages/foo``, whose README is ``readme``."""
    pkg = tmp_path / "packages" / "foo"
    (pkg / "docs").mkdir(parents=True)
    (pkg / "docs" / "chart.png").write_bytes(b"\x89PNG")
    (pkg / "src" / "vllm_plugin_foo").mkdir(parents=True)
    (pkg / "src" / "vllm_plugin_foo" / "__init__.py").write_text('__version__ = "0.1.0"\n')
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n")
    (tmp_path / "README.md").write_text("# repo\n")
    (pkg / "pyproject.toml").write_text(
        '[project]\nname = "vllm-plugin-foo"\nversion = "0.1.0"\ndependencies = ["vllm-plugin-core"]\n' + urls)
    (pkg / "README.md").write_text(readme)
    return pkg


def _problems(tmp_path: Path, readme: str, urls: str = "") -> list[str]:
    return publish.readme_problems(_tree(tmp_path, readme, urls), tmp_path)


def test_relative_link_names_the_absolute_url(tmp_path: Path) -> None:
    [problem] = _problems(tmp_path, "# foo\n\nSee [the guide](../../docs/guide.md#setup).\n")
    assert problem == ("packages/foo/README.md:3: link '../../docs/guide.md#setup' is relative (breaks on the "
                       f"index's project page): write {REPO}/blob/main/docs/guide.md#setup")


def test_relative_image_names_the_raw_url(tmp_path: Path) -> None:
    [problem] = _problems(tmp_path, "# foo\n![chart](docs/chart.png)\n")
    assert problem.endswith(f"image 'docs/chart.png' is relative (breaks on the index's project page): "
                            f"write {REPO}/raw/main/packages/foo/docs/chart.png")


def test_relative_folder_names_the_tree_url(tmp_path: Path) -> None:
    [problem] = _problems(tmp_path, "# foo\n[code](src/)\n")
    assert problem.endswith(f"write {REPO}/tree/main/packages/foo/src")


def test_every_kind_of_relative_target_is_found(tmp_path: Path) -> None:
    readme = "\n".join([
        "# foo",
        '<img src="docs/chart.png" alt="chart">',                       # 2: HTML image
        '<a href="../../README.md">repo</a>',                           # 3: HTML link
        "",                                                             # 4: (ends the HTML block)
        "See [the repo][ref].",                                         # 5: reference link (9)
        "[![badge](docs/chart.png)](https://example.com/)",             # 6: image inside a link
        "[a](<docs/chart.png>) and [b](docs/chart.png \"title\")",     # 7: <target> and a title
        "",
        "[ref]: ../../README.md",                                       # 9: its definition
    ]) + "\n"
    problems = _problems(tmp_path, readme)
    assert [p.split(":", 2)[1] for p in problems] == ["2", "3", "6", "7", "7", "9"], problems
    assert [p.split(": ", 1)[1].split(" ", 1)[0] for p in problems] == [
        "image", "link", "image", "link", "link", "link"], problems


def test_code_is_not_a_link(tmp_path: Path) -> None:
    readme = "# foo\n\n```markdown\n[x](docs/chart.png)\n```\n\nInline `[x](docs/chart.png)` too.\n"
    assert _problems(tmp_path, readme) == []


def _renders() -> bool:
    """Whether readme_renderer[md] (PyPI's renderer) is here to render Markdown."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from readme_renderer import markdown
    except ImportError:
        return False
    return bool(getattr(markdown, "variants", None))


needs_renderer = pytest.mark.skipif(not _renders(), reason="readme_renderer[md] is in nox -s publish_rehearsal")
BOTH = pytest.mark.parametrize("render", [
    False, pytest.param(True, marks=needs_renderer)], ids=["regex", "rendered"])


def _fix(problem: str) -> str:
    """A problem without its ``file:line:`` (the regex and the renderer may
    place a multi-line tag differently)."""
    return problem.split(": ", 1)[1]


@BOTH
def test_unquoted_html_attributes_and_srcset_candidates(tmp_path: Path, render: bool) -> None:
    readme = ("# foo\n\n<img src=docs/chart.png alt=chart>\n\n"
              f'<picture><source srcset="{REPO}/raw/main/packages/foo/docs/chart.png 1x, docs/chart.png 2x">'
              f'<img src="{REPO}/raw/main/packages/foo/docs/chart.png"></picture>\n')
    problems = publish.readme_problems(_tree(tmp_path, readme), tmp_path, render=render)
    assert problems == [
        "packages/foo/README.md:3: image 'docs/chart.png' is relative (breaks on the index's project page): "
        f"write {REPO}/raw/main/packages/foo/docs/chart.png",
        "packages/foo/README.md:5: image 'docs/chart.png' is relative (breaks on the index's project page): "
        f"write {REPO}/raw/main/packages/foo/docs/chart.png",
    ]


@BOTH
def test_fences_of_tildes_and_four_backticks_are_code(tmp_path: Path, render: bool) -> None:
    readme = ("# foo\n\n~~~markdown\n```\n[x](docs/chart.png)\n```\n~~~\n\n"
              "````markdown\n```python\n[y](docs/chart.png)\n```\n````\n\n"
              "## After\n\n[z](docs/chart.png) [up](#after)\n")
    problems = publish.readme_problems(_tree(tmp_path, readme), tmp_path, render=render)
    assert problems == [
        "packages/foo/README.md:17: link 'docs/chart.png' is relative (breaks on the index's project page): "
        f"write {REPO}/blob/main/packages/foo/docs/chart.png"]


@needs_renderer
def test_html_attributes_on_a_following_line(tmp_path: Path) -> None:
    readme = '# foo\n\n<p align="center">\n  <img alt="chart"\n       src="docs/chart.png">\n</p>\n'
    problems = publish.readme_problems(_tree(tmp_path, readme), tmp_path, render=True)
    assert problems == [
        "packages/foo/README.md:5: image 'docs/chart.png' is relative (breaks on the index's project page): "
        f"write {REPO}/raw/main/packages/foo/docs/chart.png"]


@needs_renderer
def test_reference_style_image_needs_a_raw_url(tmp_path: Path) -> None:
    readme = f"# foo\n\n![chart][c]\n\n[c]: {REPO}/blob/main/packages/foo/docs/chart.png\n"
    problems = publish.readme_problems(_tree(tmp_path, readme), tmp_path, render=True)
    assert problems == [
        f"packages/foo/README.md:5: image '{REPO}/blob/main/packages/foo/docs/chart.png' is a page, not the "
        f"image: write {REPO}/raw/main/packages/foo/docs/chart.png"]


@needs_renderer
def test_rendered_check_is_the_default_when_the_renderer_is_there(tmp_path: Path) -> None:
    readme = '# foo\n\n<img alt="chart"\n  src="docs/chart.png">\n'
    assert [_fix(p) for p in _problems(tmp_path, readme)] == [
        "image 'docs/chart.png' is relative (breaks on the index's project page): "
        f"write {REPO}/raw/main/packages/foo/docs/chart.png"]


def test_absolute_and_anchor_links_pass(tmp_path: Path) -> None:
    readme = (f"# foo\n\n## How it works\n\n[vLLM](https://github.com/vllm-project/vllm) "
              f"[guide]({REPO}/blob/main/docs/guide.md) [up]({REPO}/tree/main/packages/foo) "
              f"![chart]({REPO}/raw/main/packages/foo/docs/chart.png) [see](#how-it-works) "
              "<https://pypi.org/> [mail](mailto:a@example.com)\n")
    assert _problems(tmp_path, readme) == []


def test_broken_links_name_the_fix(tmp_path: Path) -> None:
    readme = (f"# foo\n[gone]({REPO}/blob/main/docs/gone.md)\n"
              f"![page]({REPO}/blob/main/packages/foo/docs/chart.png)\n"
              "[nowhere](#no-such-heading)\n"
              "[missing](docs/missing.md)\n")
    assert _problems(tmp_path, readme) == [
        f"packages/foo/README.md:2: link '{REPO}/blob/main/docs/gone.md' names docs/gone.md, which is not in "
        "the repository: point it at a file that exists",
        f"packages/foo/README.md:3: image '{REPO}/blob/main/packages/foo/docs/chart.png' is a page, not the "
        f"image: write {REPO}/raw/main/packages/foo/docs/chart.png",
        "packages/foo/README.md:4: link '#no-such-heading' names no heading of packages/foo/README.md: use the "
        "anchor of an existing heading",
        "packages/foo/README.md:5: link 'docs/missing.md' is relative (breaks on the index's project page) and "
        "names packages/foo/docs/missing.md, which is not in the repository: link an absolute URL that exists",
    ]


def test_project_urls_repository_wins(tmp_path: Path) -> None:
    urls = '[project.urls]\nRepository = "https://git.example.org/team/plugins"\n'
    [problem] = _problems(tmp_path, "# foo\n[up](../../README.md)\n", urls)
    assert problem.endswith("write https://git.example.org/team/plugins/blob/main/README.md")


def test_pyproject_urls_agree_with_the_release_script() -> None:
    """A package that declares its repository declares the one README links use."""
    for dist, folder in PACKAGES.items():
        assert publish.repository_url(folder) == REPO, \
            f"{dist}'s [project.urls] Repository != release/publish.py's REPOSITORY"


class _Targets(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.found.append(value)
            elif name == "id" and value is not None:
                self.ids.add(value)


def test_rendered_as_the_index_renders_them() -> None:
    """Each README through readme_renderer (PyPI's renderer): every href and
    src of the page is absolute or an anchor of a heading there."""
    markdown = pytest.importorskip("readme_renderer.markdown",
                                   reason="readme_renderer[md] is in nox -s publish_rehearsal")
    for dist, folder in sorted(PACKAGES.items()):
        rendered = markdown.render((folder / "README.md").read_text(encoding="utf-8"))
        assert rendered, f"{dist}'s README does not render: pip install 'readme_renderer[md]'"
        parser = _Targets()
        parser.feed(rendered)
        relative = [t for t in parser.found if not publish._SCHEME.match(t) and not t.startswith("#")]
        assert not relative, f"{dist}'s README renders relative links or images: {relative}"
        dangling = [t for t in parser.found if t.startswith("#") and t[1:] not in parser.ids]
        assert not dangling, f"{dist}'s README renders anchors no heading has: {dangling}"
