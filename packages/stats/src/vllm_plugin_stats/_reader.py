"""Read stats files back: rotated files in order, torn lines skipped, runs split.

A *stream* is one written path with its rotated files (``f.jsonl.N`` ...
``f.jsonl.1``, ``f.jsonl``: oldest first). A *run* is one server process
within a stream: it begins at a ``start`` record from a new pid, or from an
engine that already started in the current run (a restart that kept its
pid). Imports only the standard library.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Warn = Callable[[str], None]
_ROTATED = re.compile(r"^(?P<base>.+)\.(?P<n>\d+)$")


@dataclass
class Run:
    """The records of one server process, in file order."""

    stream: str
    pid: int | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    starts: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def engines(self) -> list[int]:
        return sorted({int(r.get("engine", 0)) for r in self.records})


def _base(path: Path) -> tuple[Path, int]:
    m = _ROTATED.match(path.name)
    if m:
        return path.with_name(m["base"]), int(m["n"])
    return path, 0


def expand(paths: Iterable[str | os.PathLike[str]]) -> dict[Path, list[Path]]:
    """Streams named by ``paths``: base path -> its existing files, oldest first.

    A file brings its rotated siblings; a directory brings every ``*.jsonl``
    stream in it.
    """
    files: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            members = [c for c in p.iterdir() if c.is_file() and not c.name.startswith(".")]
            files.update(c for c in members if _base(c)[0].suffix == ".jsonl")
            continue
        if not p.exists():
            raise FileNotFoundError(f"no such file: {p}")
        base, _ = _base(p)
        files.add(p)
        files.update(c for c in base.parent.glob(base.name + ".*") if _base(c)[0] == base)
        if base.exists():
            files.add(base)
    streams: dict[Path, list[Path]] = {}
    for f in files:
        streams.setdefault(_base(f)[0], []).append(f)
    for members in streams.values():
        members.sort(key=lambda f: -_base(f)[1])  # .N (oldest) ... .1, then the live file
    return dict(sorted(streams.items()))


def _lines(path: Path, warn: Warn) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError as exc:
                warn(f"{path}:{lineno}: skipped a line that is not JSON ({exc.__class__.__name__}: {exc})")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("type"), str):
                warn(f"{path}:{lineno}: skipped a line that is not a stats record")
                continue
            yield rec


def read_records(paths: Iterable[str | os.PathLike[str]], warn: Warn) -> Iterator[dict[str, Any]]:
    """Every record of the streams named by ``paths``; bad lines go to ``warn``."""
    for members in expand(paths).values():
        for f in members:
            yield from _lines(f, warn)


def read_runs(paths: Iterable[str | os.PathLike[str]], warn: Warn) -> list[Run]:
    """The runs in the streams named by ``paths``, stream by stream."""
    runs: list[Run] = []
    for base, members in expand(paths).items():
        cur: Run | None = None
        for f in members:
            for rec in _lines(f, warn):
                engine = int(rec.get("engine", 0) or 0)
                if rec["type"] == "start":
                    pid = rec.get("pid")
                    if cur is None or (cur.pid is not None and pid != cur.pid) or engine in cur.starts:
                        cur = Run(str(base), pid)
                        runs.append(cur)
                    cur.pid = pid
                    cur.starts[engine] = rec
                elif cur is None:
                    cur = Run(str(base))  # the start record was rotated away
                    runs.append(cur)
                cur.records.append(rec)
    return runs
