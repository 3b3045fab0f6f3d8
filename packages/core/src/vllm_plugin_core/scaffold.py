"""``vllm-plugins new``: generate a plugin package from the templates.

``vllm-plugins new foo-bar --group general`` writes ``packages/foo-bar/`` for
the distribution ``vllm-plugin-foo-bar`` (import package
``vllm_plugin_foo_bar``): pyproject (hatchling, src layout, dynamic version,
the entry point, the ``vllm`` extra), the entry-point module, a declared
settings object, README, CHANGELOG, LICENSE and a test that vLLM's own loader
discovers the entry point.

Templates live in ``vllm_plugin_core/templates/``: ``_common/`` for every
group, then ``<group>/`` on top (a file there replaces the common one). In
paths, ``__import__`` stands for the import package and ``__snake__`` for the
name with underscores; file names lose their
``.tmpl`` suffix. Contents use ``{{key}}`` placeholders (see
:func:`substitutions`); no template engine is needed.

This module imports only the standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vllm_plugin_core.version import SUPPORTED_VLLM

__all__ = ["GROUPS", "Group", "ScaffoldError", "generate", "substitutions", "validate_name"]

TEMPLATES = Path(__file__).parent / "templates"
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


class ScaffoldError(ValueError):
    """The package cannot be generated (bad name, existing folder, unknown group)."""


@dataclass(frozen=True)
class Group:
    """One kind of plugin the scaffold can generate."""

    entry_group: str  #: vLLM's entry-point group
    target: str  #: ``module:attr`` of the entry point, relative to the import package
    what: str  #: one line for the README
    #: README rows of the settings that ``<group>/src/__import__/_settings.py`` declares
    settings_rows: str = ("| `VLLM_PLUGIN_{{upper}}_VERBOSE` | boolean | `0` "
                          "| log what the plugin does at info level |")


GROUPS: dict[str, Group] = {
    "general": Group("vllm.general_plugins", "_entry:register",
                     "a general plugin: `register()` runs in every vLLM process"),
    "platform": Group("vllm.platform_plugins", "_entry:detect",
                      "an out-of-tree platform, activated by an environment variable",
                      "| `VLLM_PLUGIN_{{upper}}` | boolean | `0` "
                      "| activate the platform instead of vLLM's own |"),
    "stat_logger": Group("vllm.stat_logger_plugins", "logger:{{class_name}}StatLogger",
                         "a stat logger that vLLM feeds after every engine step"),
    "logits_processor": Group("vllm.logits_processors", "processor:{{class_name}}LogitsProcessor",
                              "a logits processor (V1 and V2 model runners)"),
    "io_processor": Group("vllm.io_processor_plugins", "_entry:io_processor",
                          "an IO processor plugin for pooling models"),
}


def validate_name(name: str) -> None:
    """Raise :class:`ScaffoldError` unless ``name`` is lowercase letters,
    digits and single hyphens, starting with a letter (e.g. ``my-plugin``)."""
    if name.startswith("vllm-plugin-"):
        raise ScaffoldError(
            f"plugin name {name!r}: give the part after 'vllm-plugin-' "
            f"(e.g. {name.removeprefix('vllm-plugin-')!r}); the prefix is added for you")
    if not _NAME.match(name):
        raise ScaffoldError(
            f"plugin name {name!r} is not valid: use lowercase letters, digits and single "
            "hyphens, starting with a letter (e.g. 'my-plugin')")


def substitutions(name: str, group: str) -> dict[str, str]:
    """The placeholder values for plugin ``name`` of ``group``."""
    snake = name.replace("-", "_")
    values = {
        "name": name,  # my-plugin
        "snake": snake,  # my_plugin (also the entry-point name)
        "upper": snake.upper(),  # MY_PLUGIN
        "class_name": "".join(part.capitalize() for part in name.split("-")),  # MyPlugin
        "dist": f"vllm-plugin-{name}",
        "import_name": f"vllm_plugin_{snake}",
        "group": group,
        "entry_group": GROUPS[group].entry_group,
        "what": GROUPS[group].what,
        "vllm_range": SUPPORTED_VLLM,
    }
    values["settings_rows"] = render(GROUPS[group].settings_rows, values)
    module, attr = GROUPS[group].target.split(":")
    values["entry_value"] = f"{values['import_name']}.{module}:{render(attr, values)}"
    return values


def render(text: str, values: dict[str, str]) -> str:
    """Replace every ``{{key}}``; an unknown key is a bug in a template."""

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {{{{{key}}}}} has no value")
        return values[key]

    return _PLACEHOLDER.sub(sub, text)


def _template_files(group: str) -> dict[str, Path]:
    """{relative output path with placeholders: template file}; group overrides common."""
    files: dict[str, Path] = {}
    for layer in ("_common", group):
        root = TEMPLATES / layer
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                rel = path.relative_to(root).as_posix().removesuffix(".tmpl")
                files[rel] = path
    return files


def generate(name: str, group: str, dest: str | Path = "packages") -> Path:
    """Write the package ``dest/<name>/`` and return its path.

    Raises :class:`ScaffoldError` for a bad name, an unknown group or an
    existing folder (nothing is written then).
    """
    validate_name(name)
    if group not in GROUPS:
        raise ScaffoldError(f"unknown group {group!r}: choose one of {', '.join(GROUPS)}")
    root = Path(dest) / name
    if root.exists():
        raise ScaffoldError(f"{root} already exists: choose another name or remove it first")
    values = substitutions(name, group)
    rendered = {
        rel.replace("__import__", values["import_name"]).replace("__snake__", values["snake"]): render(path.read_text(encoding="utf-8"), values)
        for rel, path in _template_files(group).items()
    }
    for rel, text in rendered.items():
        out = root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    return root


def main(name: str, group: str, dest: str) -> int:
    """The ``vllm-plugins new`` command."""
    import sys

    try:
        root = generate(name, group, dest)
    except ScaffoldError as exc:
        print(f"vllm-plugins new: error: {exc}", file=sys.stderr)
        return 2
    values = substitutions(name, group)
    print(f"created {root}/ ({values['dist']}, import {values['import_name']}, "
          f"{values['entry_group']} entry point {values['snake']!r})")
    print(f"next: uv pip install -e {root} && python -m pytest {root}/tests")
    return 0
