"""``python -m analysis PATH... [--out DIR]``: write results.csv, the figures and report.md.

Exit status 0 on success, 2 (with a one-line error on stderr) when a path holds no runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: never open a window

from .load import NoRunsError, find_run_dirs  # noqa: E402 - after choosing the backend

EXIT_NO_RUNS = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line: one or more run/sweep paths and an optional output folder."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Analyse kd-hydra run directories (single runs, multirun roots, nested sweeps).",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run directory or sweep root")
    parser.add_argument("--out", metavar="DIR", default=None, help="output folder (default: the first PATH)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the analysis; returns the process exit status."""
    args = parse_args(argv)
    try:
        for path in args.paths:  # fail fast, before importing the plotting stack
            find_run_dirs(path)
        from .report import write_report

        written = write_report(args.paths, args.out)
    except NoRunsError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NO_RUNS
    for key, path in written.items():
        print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
