"""Analysis of kd-hydra run directories: load them into pandas, aggregate, plot, report.

Reads only what :mod:`kd_hydra.records.schema` defines (never imports torch). Names are imported on
first use, so ``import analysis`` (and the Hydra callback) stays cheap. Typical use::

    runs = load_runs("multirun/2024-01-01/12-00-00")
    aggregate(completed_runs(runs, "distill"), by=["loss.temperature", "loss.alpha"])
    rank_settings(runs)  # every setting that varies, best first (validation accuracy when present)
    best_settings(rank_settings(runs))  # the highest setting, and every setting tied with it
    paper_tables(runs)  # per setup: teacher, baseline, each method's selected setting, the recipe as caption
    write_report(["multirun/2024-01-01/12-00-00"], "report_dir")  # report.md, results.csv, table.md/.tex, PNGs
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: Public name -> submodule that defines it.
_EXPORTS = {
    "NoRunsError": "load",
    "find_run_dirs": "load",
    "history_of": "load",
    "load_history": "load",
    "load_runs": "load",
    "Setup": "aggregate",
    "aggregate": "aggregate",
    "across_setups_by": "aggregate",
    "baseline_levels": "aggregate",
    "best_settings": "aggregate",
    "compare_methods": "aggregate",
    "distill_methods": "aggregate",
    "rank_settings": "aggregate",
    "runs_of_method": "aggregate",
    "selection_metric": "aggregate",
    "setting_columns": "aggregate",
    "swept_loss_keys": "aggregate",
    "varying_columns": "aggregate",
    "baseline_accuracy": "aggregate",
    "ci95_half_width": "stats",
    "compare_to_top": "stats",
    "distinguishable": "stats",
    "interval": "stats",
    "seeds_needed": "stats",
    "fixed_method_settings": "aggregate",
    "PaperTable": "tables",
    "paper_tables": "tables",
    "results_table": "tables",
    "setting_claim": "tables",
    "latex_document": "tables",
    "plot_search_samples": "plots",
    "completed_runs": "aggregate",
    "distill_setups": "aggregate",
    "kd_gain": "aggregate",
    "runs_of_setup": "aggregate",
    "teacher_accuracy": "aggregate",
    "NotApplicable": "plots",
    "plot_accuracy_vs_temperature": "plots",
    "plot_heatmap": "plots",
    "plot_kd_gain": "plots",
    "plot_learning_curves": "plots",
    "plot_method_comparison": "plots",
    "save_figure": "plots",
    "csv_safe": "text",
    "tables_markdown": "report",
    "write_report": "report",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily
    from .aggregate import (
        Setup,
        across_setups_by,
        aggregate,
        baseline_accuracy,
        baseline_levels,
        best_settings,
        compare_methods,
        completed_runs,
        distill_methods,
        distill_setups,
        fixed_method_settings,
        kd_gain,
        rank_settings,
        runs_of_method,
        runs_of_setup,
        selection_metric,
        setting_columns,
        swept_loss_keys,
        teacher_accuracy,
        varying_columns,
    )
    from .load import NoRunsError, find_run_dirs, history_of, load_history, load_runs
    from .plots import (
        NotApplicable,
        plot_accuracy_vs_temperature,
        plot_heatmap,
        plot_kd_gain,
        plot_learning_curves,
        plot_method_comparison,
        plot_search_samples,
        save_figure,
    )
    from .report import tables_markdown, write_report
    from .stats import ci95_half_width, compare_to_top, distinguishable, interval, seeds_needed
    from .tables import PaperTable, latex_document, paper_tables, results_table, setting_claim
    from .text import csv_safe


def __getattr__(name: str) -> Any:
    """Import the submodule defining ``name`` on first access (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Module attributes plus the lazily imported public names."""
    return sorted({*globals(), *__all__})
