"""Check the wheels and sdists in a dist/ folder against each package's pyproject.toml.

    python tests/packaging/check_wheels.py [DIST_DIR [DISTRIBUTION ...]]

For every package under ``packages/`` (or only the named distributions) (folders starting with ``_`` are not
packages) this asserts that ``DIST_DIR`` holds exactly one wheel and one sdist
of its current version, and that the wheel:

* carries its LICENSE (``*.dist-info/licenses/LICENSE``, named by ``License-File``),
* has its README as long description (``text/markdown``, byte for byte),
* declares the ``vllm`` extra with core's supported range (``SUPPORTED_VLLM``),
* has exactly the entry points and console scripts of its pyproject.toml;

and that the sdist holds pyproject.toml, README.md and LICENSE. Standard
library only (``packaging`` is used when installed to compare specifiers).
"""

from __future__ import annotations

import ast
import configparser
import email.parser
import re
import sys
import tarfile
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
CORE_VERSION_MODULE = ROOT / "packages" / "core" / "src" / "vllm_plugin_core" / "version.py"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _literal(path: Path, name: str) -> str:
    """Value of a module-level string constant, without importing the module."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {path}")


def supported_vllm() -> str:
    return _literal(CORE_VERSION_MODULE, "SUPPORTED_VLLM")


def packages() -> list[Path]:
    return sorted(p for p in (ROOT / "packages").iterdir()
                  if (p / "pyproject.toml").exists() and not p.name.startswith("_"))


def package_version(pkg: Path, project: dict) -> str:
    if "version" in project:
        return project["version"]
    path = tomllib.loads((pkg / "pyproject.toml").read_text())["tool"]["hatch"]["version"]["path"]
    return _literal(pkg / path, "__version__")


def _same_specifiers(a: str, b: str) -> bool:
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:
        return sorted(s.strip() for s in a.split(",")) == sorted(s.strip() for s in b.split(","))
    return SpecifierSet(a) == SpecifierSet(b)


def _vllm_extra_spec(requires_dist: list[str]) -> list[str]:
    """Specifiers of the ``vllm`` requirements guarded by ``extra == "vllm"``."""
    out = []
    for req in requires_dist:
        m = re.match(r"""^vllm\s*(?:\((?P<p>[^)]*)\)|(?P<s>[^;]*));\s*extra\s*==\s*['"]vllm['"]\s*$""", req)
        if m:
            out.append((m.group("p") or m.group("s") or "").strip())
    return out


def expected_entry_points(project: dict) -> dict[str, dict[str, str]]:
    eps = {group: dict(items) for group, items in project.get("entry-points", {}).items()}
    if project.get("scripts"):
        eps["console_scripts"] = dict(project["scripts"])
    if project.get("gui-scripts"):
        eps["gui_scripts"] = dict(project["gui-scripts"])
    return eps


def check_wheel(wheel: Path, pkg: Path, project: dict, supported: str) -> list[str]:
    errors: list[str] = []
    name = project["name"]
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
        if len(dist_info) != 1:
            return [f"{wheel.name}: expected one .dist-info folder, found {sorted(dist_info)}"]
        di = dist_info.pop()
        meta = email.parser.Parser().parsestr(zf.read(f"{di}/METADATA").decode("utf-8"))

        # LICENSE
        license_text = (pkg / "LICENSE").read_text(encoding="utf-8")
        lic_files = meta.get_all("License-File") or []
        if "LICENSE" not in lic_files:
            errors.append(f"{wheel.name}: METADATA has no 'License-File: LICENSE' (has {lic_files})")
        lic_path = f"{di}/licenses/LICENSE"
        if lic_path not in names:
            errors.append(f"{wheel.name}: {lic_path} missing")
        elif zf.read(lic_path).decode("utf-8") != license_text:
            errors.append(f"{wheel.name}: {lic_path} differs from {pkg.name}/LICENSE")

        # README as long description
        readme = (pkg / project["readme"]).read_text(encoding="utf-8") if isinstance(project.get("readme"), str) \
            else None
        if readme is None:
            errors.append(f"{pkg.name}/pyproject.toml: `readme` must name the README file")
        else:
            body = meta.get_payload()
            if (meta.get("Description-Content-Type") or "").split(";")[0].strip() != "text/markdown":
                errors.append(f"{wheel.name}: Description-Content-Type is "
                              f"{meta.get('Description-Content-Type')!r}, not text/markdown")
            if not body or body.strip() != readme.strip():
                errors.append(f"{wheel.name}: long description is not {pkg.name}/{project['readme']}")

        # the vllm extra
        if "vllm" not in (meta.get_all("Provides-Extra") or []):
            errors.append(f"{wheel.name}: no 'Provides-Extra: vllm'")
        specs = _vllm_extra_spec(meta.get_all("Requires-Dist") or [])
        if len(specs) != 1 or not _same_specifiers(specs[0], supported):
            errors.append(f"{wheel.name}: extra 'vllm' should require exactly vllm{supported}, found {specs}")
        hard = [r for r in meta.get_all("Requires-Dist") or []
                if re.match(r"^vllm\b(?![-_.])", r) and "extra" not in r]
        if hard:
            errors.append(f"{wheel.name}: hard dependency on the vllm distribution: {hard}")

        # entry points
        expected = expected_entry_points(project)
        ep_path = f"{di}/entry_points.txt"
        found: dict[str, dict[str, str]] = {}
        if ep_path in names:
            cp = configparser.ConfigParser(interpolation=None, delimiters=("=",))
            cp.optionxform = str  # type: ignore[assignment,method-assign]
            cp.read_string(zf.read(ep_path).decode("utf-8"))
            found = {s: {k: v.strip() for k, v in cp.items(s)} for s in cp.sections()}
        elif expected:
            errors.append(f"{wheel.name}: {ep_path} missing")
        if found != expected:
            errors.append(f"{wheel.name}: entry points {found} != pyproject's {expected}")

        if meta.get("Name") and _normalize(meta["Name"]) != _normalize(name):
            errors.append(f"{wheel.name}: Name {meta['Name']!r} != {name!r}")
    return errors


def check_sdist(sdist: Path, pkg: Path, project: dict) -> list[str]:
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    need = {"pyproject.toml", "LICENSE", project.get("readme", "README.md"), "PKG-INFO"}
    missing = sorted(need - members)
    return [f"{sdist.name}: missing {missing}"] if missing else []


def main(dist: Path, only: list[str] | None = None) -> int:
    supported = supported_vllm()
    errors: list[str] = []
    wanted = {_normalize(d) for d in only or []}
    unknown = set(wanted)  # named but not found (`wanted` itself stays whole: it filters)
    for pkg in packages():
        project = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]
        if wanted and _normalize(project["name"]) not in wanted:
            continue
        unknown.discard(_normalize(project["name"]))
        version = package_version(pkg, project)
        stem = f"{_normalize(project['name'])}-{version}"
        wheels = sorted(dist.glob(f"{stem}-*.whl"))
        sdists = sorted(dist.glob(f"{stem}.tar.gz"))
        if len(wheels) != 1 or len(sdists) != 1:
            errors.append(f"{project['name']} {version}: expected one wheel and one sdist in {dist}, "
                          f"found {[p.name for p in wheels + sdists]}")
            continue
        errs = check_wheel(wheels[0], pkg, project, supported) + check_sdist(sdists[0], pkg, project)
        errors += errs
        print(f"{'FAIL' if errs else 'ok  '} {wheels[0].name}, {sdists[0].name}")
    errors += [f"no package under packages/ publishes {d}" for d in sorted(unknown)]
    for e in errors:
        print(f"ERROR: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist", sys.argv[2:]))
