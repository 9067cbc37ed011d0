"""Analysis of kd-hydra run directories: load them into pandas, aggregate, plot, report.

Reads only what :mod:`kd_hydra.schema` defines (never imports torch). Typical use::

    runs = load_runs("multirun/2024-01-01/12-00-00")
    aggregate(runs[runs["mode"] == "distill"], by=["loss.temperature", "loss.alpha"])
    write_report(["multirun/2024-01-01/12-00-00"], "report_dir")
"""

from .aggregate import (
    Setup,
    aggregate,
    baseline_accuracy,
    ci95_half_width,
    completed_runs,
    distill_setups,
    kd_gain,
    runs_of_setup,
    teacher_accuracy,
)
from .load import NoRunsError, find_run_dirs, history_of, load_history, load_runs
from .plots import (
    plot_accuracy_vs_temperature,
    plot_heatmap,
    plot_kd_gain,
    plot_learning_curves,
    save_figure,
)
from .report import write_report

__all__ = [
    "NoRunsError",
    "Setup",
    "aggregate",
    "baseline_accuracy",
    "ci95_half_width",
    "completed_runs",
    "distill_setups",
    "find_run_dirs",
    "history_of",
    "kd_gain",
    "load_history",
    "load_runs",
    "plot_accuracy_vs_temperature",
    "plot_heatmap",
    "plot_kd_gain",
    "plot_learning_curves",
    "runs_of_setup",
    "save_figure",
    "teacher_accuracy",
    "write_report",
]
