"""``vllm-plugin-stats``: read stats files back.

    vllm-plugin-stats summary FILE... [--json]
    vllm-plugin-stats plot FILE... -o report.png|report.html

A FILE brings its rotated siblings (``FILE.1`` ...); a directory brings every
``*.jsonl`` in it. A torn or corrupt line is skipped with a warning on stderr
giving the file and line number. Exit status: 0, 1 when no file or no record
was found, 2 for bad usage (or matplotlib missing for ``plot``).

A console script of its own: ``vllm-plugins`` (core) has no way for a
package to add subcommands.
"""

from __future__ import annotations

import argparse
import json
import sys

from vllm_plugin_stats import summary as _summary

__all__ = ["main"]


def _warn(message: str) -> None:
    print(f"vllm-plugin-stats: warning: {message}", file=sys.stderr)


def _summaries(files: list[str]) -> list[dict] | None:
    try:
        runs = _summary.summarize_files(files, _warn)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"vllm-plugin-stats: {exc}", file=sys.stderr)
        return None
    if not runs:
        print(f"vllm-plugin-stats: no stats records in {' '.join(files)}", file=sys.stderr)
        return None
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-plugin-stats", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="a table per run: uptime, requests, tokens, throughput, latencies")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per run")
    p = sub.add_parser("plot", help="throughput, running/waiting, KV usage and latencies over time")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-o", "--output", required=True, help="report.png, or report.html (chart and summary)")
    args = parser.parse_args(argv)

    if args.command == "summary":
        runs = _summaries(args.files)
        if runs is None:
            return 1
        if args.json:
            print(json.dumps(runs, indent=2))
        else:
            print("\n\n".join(_summary.format_table(s, i) for i, s in enumerate(runs, 1)))
        return 0

    if not args.output.lower().endswith((".png", ".html")):
        parser.error(f"-o {args.output}: the name must end in .png or .html")
    try:
        from vllm_plugin_stats import plot as _plot

        _plot._matplotlib()
    except ImportError as exc:
        print(f"vllm-plugin-stats: {exc}", file=sys.stderr)
        return 2
    runs = _summaries(args.files)  # warnings for bad lines are printed once, here
    if runs is None:
        return 1
    text = "\n\n".join(_summary.format_table(s, i) for i, s in enumerate(runs, 1))
    _plot.plot_files(args.files, args.output, lambda _message: None, text)
    print(f"vllm-plugin-stats: wrote {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
