"""``python -m analysis PATH... [--out DIR]``: write results.csv, the figures and report.md.

Exit status 0 on success; 2 with one ``error: ...`` line on stderr when a path holds no runs, the
output folder cannot be written, or the analysis fails. A run whose files cannot be read is kept as
unfinished and named in one ``warning: ...`` line.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never open a window

from .load import NoRunsError, find_run_dirs  # noqa: E402 - after choosing the backend

EXIT_NO_RUNS = 2
EXIT_FAILED = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line: one or more run/sweep paths and an optional output folder."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Analyse kd-hydra run directories (single runs, multirun roots, nested sweeps).",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run directory or sweep root")
    parser.add_argument("--out", metavar="DIR", default=None, help="output folder (default: the first PATH)")
    return parser.parse_args(argv)


def output_problem(out: Path) -> str | None:
    """Why ``out`` cannot be the output folder (a file, or below one), or None."""
    for candidate in (out, *out.parents):
        if candidate.exists() and not candidate.is_dir():
            return f"--out {out}: {candidate} exists and is not a directory"
        if candidate.exists():
            return None
    return None


def _warning_line(message: Any, category: Any, filename: Any, lineno: Any, file: Any = None, line: Any = None) -> None:
    """Show a warning as one ``warning: ...`` line on stderr (no source line, no location)."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the analysis; returns the process exit status."""
    args = parse_args(argv)
    problem = output_problem(Path(args.out if args.out is not None else args.paths[0]))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_FAILED
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line
        try:
            for path in args.paths:  # fail fast, before importing the plotting stack
                find_run_dirs(path)
            from .report import write_report

            written = write_report(args.paths, args.out)
        except NoRunsError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_NO_RUNS
        except OSError as error:
            where = f" {error.filename}" if error.filename else ""
            print(f"error: cannot write the analysis:{where}: {error.strerror or error}", file=sys.stderr)
            return EXIT_FAILED
        except Exception as error:  # noqa: BLE001 - bad input ends in one line, never a traceback
            message = str(error).strip().splitlines()
            print(f"error: analysis failed: {type(error).__name__}: {message[-1] if message else ''}", file=sys.stderr)
            return EXIT_FAILED
    for key, path in written.items():
        print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
