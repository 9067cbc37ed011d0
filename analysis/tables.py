"""The paper table of each setup: the teacher, the baseline student and each method's selected setting, with the
fixed recipe as its caption; rendered as Markdown (report.md, table.md) and LaTeX (table.tex: a plain ``tabular``).

Accuracies, agreement, KL and ECE are means over seeds ± the half-width of their 95% Student-t interval
(:mod:`analysis.stats`); the gain is paired by seed. The cost column is the epoch loop's seconds per epoch without
the soft-label cache fill, which the notes list apart (the job that fills the cache pays for every later one).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from kd_hydra.enums import Mode

from .aggregate import (
    METHOD,
    SEED,
    Setup,
    across_setups_by,
    as_float,
    baseline_levels,
    compare_methods,
    completed_runs,
    distill_setups,
    fixed_method_settings,
    format_value,
    is_bookkeeping,
    kd_gain,
    only_setting_label,
    rank_settings,
    runs_of_setup,
    setting_columns,
    teacher_accuracy,
    varying_columns,
)
from .load import (
    BEST_TEST_ACC,
    DATA_DIGEST,
    FINAL_TEST_ACC,
    FINAL_TEST_ACC_TOP5,
    FINAL_VAL_ACC,
    MODEL_PARAMS,
    RUN_DIR,
    TEACHER_ID,
    TEACHER_PARAMS,
)
from .logits import agreement_and_kl, read_test_logits
from .stats import Claim, Interval, compare_to_top, distinguishable, interval, seeds_text

#: The paper table's columns: key, header, LaTeX alignment. Columns without a value in any row are left out,
#: except those of REQUIRED_COLUMNS.
COLUMNS = (
    ("model", "model", "l"),
    ("setting", "setting (what varies)", "l"),
    ("architecture", "architecture", "l"),
    ("params", "parameters", "r"),
    ("extra_params", "method parameters", "r"),
    ("macs", "MACs / image", "r"),
    ("extra_macs", "method MACs / image", "r"),
    ("seeds", "seeds", "r"),
    ("val", "val acc (%)", "r"),
    ("last", "test acc, last epoch (%)", "r"),
    ("best", "test acc, best epoch (%)", "r"),
    ("top5", "top-5 test acc, last epoch (%)", "r"),
    ("gain", "gain, paired (pp)", "r"),
    ("agreement", "top-1 agreement with teacher (%)", "r"),
    ("kl", "KL(teacher‖student) (nats)", "r"),
    ("ece", "ECE (%)", "r"),
    ("cost", "s / epoch (cache fill apart)", "r"),
)
REQUIRED_COLUMNS = ("model", "setting", "architecture", "last")
DASH = "—"
#: Metrics of the table (metrics.json keys).
TRAIN_SECONDS = "train_seconds"
FILL_SECONDS = "soft_label_cache_fill_seconds"
EPOCHS = "epochs"
TEST_ECE, TEACHER_TEST_ECE = "test_ece", "teacher_test_ece"
AGREEMENT, KL = "teacher_agreement", "teacher_kl"
MODEL_MACS, TEACHER_MACS, METHOD_MACS, METHOD_PARAMS = "model_macs", "teacher_macs", "method_macs", "method_params"
TEACHER_VAL_ACC = "teacher_val_acc"
SPLIT_IMAGES = (("train_images", "train"), ("val_images", "validation"), ("test_images", "test"))
#: Config prefixes of the fixed recipe in the caption (with the dataset's name, split sizes and seeds).
RECIPE_PREFIXES = ("trainer.", "optimizer.", "scheduler.")
RECIPE_DATA_KEYS = ("dataset.val_fraction",)
TEACHER_RECIPE_PREFIX = "teacher_training."
STATS_NOTE = ("Mean over seeds ± half-width of the 95% Student-t interval; gain: per seed, distilled minus the "
              "same-seed baseline, then mean ± 95% t-interval; agreement and KL(teacher‖student) at T = 1 and "
              "ECE (15 equal-width confidence bins) on the test split; MACs: one forward on one image "
              "(FLOPs = 2 × MACs).")  # fmt: skip


@dataclass(frozen=True)
class PaperTable:
    """One setup's table: header and rows of display text, the LaTeX alignment per column, the caption (the
    recipe and what the numbers are) and notes (the claim, the cache fill, each method's fixed settings)."""

    setup: Setup
    header: tuple[str, ...]
    aligns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str
    notes: tuple[str, ...]


def paper_tables(runs: pd.DataFrame) -> list[PaperTable]:
    """The :class:`PaperTable` of every setup of ``runs`` (none without completed distill runs)."""
    return [paper_table(runs, setup) for setup in distill_setups(runs)]


def paper_table(runs: pd.DataFrame, setup: Setup) -> PaperTable:
    """The teacher, the matched baseline student and each method's selected setting(s) of ``setup``."""
    subset = runs_of_setup(runs, setup)
    distill = completed_runs(subset, Mode.distill.value)
    selected = compare_methods(subset)
    gains = kd_gain(subset).set_index(RUN_DIR)
    baselines = _matched_baselines(subset, setup, gains, selected)
    teacher_run = _teacher_run(subset, distill)
    any_baseline = not completed_runs(subset, Mode.student.value).empty
    rows = [_teacher_row(runs, setup, distill, teacher_run), _baseline_row(setup, baselines, teacher_run, any_baseline)]
    several = len(set(selected[METHOD])) > 1 if not selected.empty else False
    for record in selected.to_dict("records"):
        members = distill[distill[RUN_DIR].isin(record["run_dirs"])]
        name = str(record[METHOD]) + (f" (tied, 1 of {int(record['tied'])})" if record["tied"] > 1 else "")
        rows.append(_method_row(str(record[METHOD]), name, record["setting"], setup, members, gains))
    keep = [key for key, _, _ in COLUMNS if key in REQUIRED_COLUMNS or any(row.get(key, DASH) != DASH for row in rows)]
    columns = [(key, header, align) for key, header, align in COLUMNS if key in keep]
    notes = [_claim_note(selected)] if several else []
    notes += [note for note in (_fill_note(distill), _fixed_note(subset)) if note]
    return PaperTable(
        setup=setup,
        header=tuple(header for _, header, _ in columns),
        aligns=tuple(align for _, _, align in columns),
        rows=tuple(tuple(row.get(key, DASH) for key, _, _ in columns) for row in rows),
        caption=f"{setup.title()}. {recipe_caption(subset)} {STATS_NOTE}",
        notes=tuple(notes),
    )


# -- rows -----------------------------------------------------------------------------------------------------


def _values(frame: pd.DataFrame, column: str) -> pd.Series:
    return as_float(frame[column]) if column in frame.columns else pd.Series(dtype=float)


def _cell(value: Interval, seeds: int, digits: int = 2, signed: bool = False) -> str:
    """``"75.00 ± 12.71"``: the n only where it differs from the row's seeds; a dash without values."""
    if value.n == 0 or math.isnan(value.mean):
        return DASH
    sign = "+" if signed else ""
    text = f"{value.mean:{sign}.{digits}f}" + (f" ± {value.half_width:.{digits}f}" if value.has_width else "")
    return text + (f" (n={value.n})" if value.n != seeds else "")


def _single(values: pd.Series, digits: int = 2) -> str:
    """The value of a one-model row (the teacher): the mean of equal repeats, or a dash."""
    present = values.dropna()
    return f"{float(present.mean()):.{digits}f}" if len(present) else DASH


def count_text(values: pd.Series) -> str:
    """The (median) count of ``values`` with thousands separators (``"272,474"``), or a dash."""
    present = values.dropna()
    return f"{int(present.median()):,}" if len(present) else DASH


def macs_text(values: pd.Series) -> str:
    """The (median) multiply-accumulates in millions, three significant digits (``"40.8 M"``), or a dash."""
    present = values.dropna()
    if not len(present):
        return DASH
    median = float(present.median())
    return f"{median / 1e6:.3g} M" if median else "0"


def seconds_per_epoch(frame: pd.DataFrame) -> pd.Series:
    """Each run's epoch-loop seconds per epoch without the soft-label cache fill it paid (NaN where unknown)."""
    seconds = _values(frame, TRAIN_SECONDS)
    fill = _values(frame, FILL_SECONDS).reindex(seconds.index).fillna(0.0)
    epochs = _values(frame, EPOCHS).reindex(seconds.index)
    return (seconds - fill) / epochs.where(epochs > 0)


def _teacher_run(subset: pd.DataFrame, distill: pd.DataFrame) -> pd.Series | None:
    """The completed mode=teacher run of the setup's teacher (its ``teacher_id`` when the distill runs name one)."""
    teachers = completed_runs(subset, Mode.teacher.value)
    ids = set(distill[TEACHER_ID].dropna()) if TEACHER_ID in distill.columns else set()
    if len(ids) == 1 and TEACHER_ID in teachers.columns:
        teachers = teachers[teachers[TEACHER_ID] == next(iter(ids))]
    return teachers.iloc[0] if len(teachers) else None


def _teacher_row(runs: pd.DataFrame, setup: Setup, distill: pd.DataFrame, run: pd.Series | None) -> dict[str, str]:
    """The teacher: from the distill runs' teacher_* keys, else from its own mode=teacher run."""
    own = pd.DataFrame([run]) if run is not None else pd.DataFrame()

    def first(distill_key: str, own_key: str) -> pd.Series:
        values = _values(distill, distill_key).dropna()
        return values if len(values) else _values(own, own_key)

    accuracy = teacher_accuracy(runs, setup)
    return {
        "model": "teacher", "setting": DASH, "architecture": setup.teacher, "seeds": "1",
        "params": count_text(first(TEACHER_PARAMS, MODEL_PARAMS)), "macs": macs_text(first(TEACHER_MACS, MODEL_MACS)),
        "val": _single(first(TEACHER_VAL_ACC, FINAL_VAL_ACC)),
        "last": DASH if math.isnan(accuracy) else f"{accuracy:.2f}", "best": _single(_values(own, BEST_TEST_ACC)),
        "ece": _single(first(TEACHER_TEST_ECE, TEST_ECE)),
    }  # fmt: skip


def _matched_baselines(subset: pd.DataFrame, setup: Setup, gains: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """The baselines matched (same seed and recipe) to the selected distill runs; all baselines of the setup when
    none is matched and they share one setting."""
    baselines = completed_runs(subset, Mode.student.value)
    dirs = {d for row in selected.to_dict("records") for d in row["run_dirs"]}
    matched = {d for text in gains.loc[gains.index.isin(dirs), "baseline_run_dirs"].dropna() for d in text.split(" ")}
    if matched or len(baseline_levels(subset, setup)) != 1:
        return baselines[baselines[RUN_DIR].isin(matched)]
    return baselines


def _baseline_row(setup: Setup, baselines: pd.DataFrame, teacher_run: pd.Series | None, any_baseline: bool
                  ) -> dict[str, str]:  # fmt: skip
    """The baseline student (CE only); its agreement with the teacher from the kept test logits."""
    seeds = len(baselines)
    missing = f"{DASH} (no baseline runs)" if not any_baseline else f"{DASH} (no baseline with the same settings)"
    agreement, kl = baseline_agreement(baselines, teacher_run)
    return {
        "model": "baseline (CE only)", "setting": DASH, "architecture": setup.student, "seeds": str(seeds),
        "params": count_text(_values(baselines, MODEL_PARAMS)), "macs": macs_text(_values(baselines, MODEL_MACS)),
        "val": _cell(interval(_values(baselines, FINAL_VAL_ACC)), seeds),
        "last": _cell(interval(_values(baselines, FINAL_TEST_ACC)), seeds) if seeds else missing,
        "best": _cell(interval(_values(baselines, BEST_TEST_ACC)), seeds),
        "top5": _cell(interval(_values(baselines, FINAL_TEST_ACC_TOP5)), seeds),
        "agreement": _cell(interval(agreement), seeds), "kl": _cell(interval(kl), seeds, digits=3),
        "ece": _cell(interval(_values(baselines, TEST_ECE)), seeds),
        "cost": _cell(interval(seconds_per_epoch(baselines)), seeds),
    }  # fmt: skip


def baseline_agreement(baselines: pd.DataFrame, teacher_run: pd.Series | None) -> tuple[pd.Series, pd.Series]:
    """Per baseline run: top-1 agreement (%) and KL(teacher || baseline) (nats) with ``teacher_run``, from their
    test logits (NaN where either is missing, or their data differ)."""
    index = baselines.index
    agreement, kl = pd.Series(math.nan, index=index), pd.Series(math.nan, index=index)
    teacher = read_test_logits(teacher_run[RUN_DIR]) if teacher_run is not None else None
    if teacher is None:
        return agreement, kl
    teacher_data = teacher_run.get(DATA_DIGEST)
    for position, run in baselines.iterrows():
        data = run.get(DATA_DIGEST)
        if pd.isna(data) or pd.isna(teacher_data) or data == teacher_data:  # the same test images, in order
            student = read_test_logits(run[RUN_DIR])
            if student is not None:
                agreement[position], kl[position] = agreement_and_kl(student, teacher)
    return agreement, kl


def _method_row(method: str, name: str, setting: str, setup: Setup, members: pd.DataFrame,
                gains: pd.DataFrame) -> dict[str, str]:  # fmt: skip
    """A method's selected setting: its seeds' accuracies, paired gain, agreement, calibration, compute and cost."""
    seeds = len(members)
    paired = as_float(gains["gain"].reindex(members[RUN_DIR]))
    return {
        "model": name, "setting": DASH if setting == only_setting_label(method) else setting,
        "architecture": setup.student, "seeds": str(seeds),
        "params": count_text(_values(members, MODEL_PARAMS)),
        "extra_params": count_text(_values(members, METHOD_PARAMS)),
        "macs": macs_text(_values(members, MODEL_MACS)), "extra_macs": macs_text(_values(members, METHOD_MACS)),
        "val": _cell(interval(_values(members, FINAL_VAL_ACC)), seeds),
        "last": _cell(interval(_values(members, FINAL_TEST_ACC)), seeds),
        "best": _cell(interval(_values(members, BEST_TEST_ACC)), seeds),
        "top5": _cell(interval(_values(members, FINAL_TEST_ACC_TOP5)), seeds),
        "gain": _cell(interval(paired), seeds, signed=True),
        "agreement": _cell(interval(_values(members, AGREEMENT)), seeds),
        "kl": _cell(interval(_values(members, KL)), seeds, digits=3),
        "ece": _cell(interval(_values(members, TEST_ECE)), seeds),
        "cost": _cell(interval(seconds_per_epoch(members)), seeds),
    }  # fmt: skip


# -- caption and notes ----------------------------------------------------------------------------------------


def recipe_caption(subset: pd.DataFrame) -> str:
    """The settings every compared run (distill and baseline) shares: the dataset and its split sizes, the
    trainer, optimizer and scheduler, the seeds; the settings that vary; then the teacher's own recipe."""
    compared = pd.concat([completed_runs(subset, Mode.distill.value), completed_runs(subset, Mode.student.value)])
    if compared.empty:
        return "No completed runs to compare."
    columns = [c for c in setting_columns(compared) if c.startswith(RECIPE_PREFIXES) or c in RECIPE_DATA_KEYS]
    fixed = _fixed_values(compared, columns)
    parts = [_data_text(compared, fixed)]
    parts += [group_text(fixed, prefix) for prefix in RECIPE_PREFIXES if any(k.startswith(prefix) for k in fixed)]
    seeds = sorted({format_value(s) for s in compared[SEED].dropna()}, key=_numeric_key) if SEED in compared else []
    if seeds:
        parts.append("seeds " + ", ".join(seeds))
    text = "Recipe of every compared run: " + "; ".join(p for p in parts if p) + "."
    varying = varying_columns(compared, columns)
    if varying:
        text += " Varying (named in the settings): " + ", ".join(varying) + "."
    distill = completed_runs(subset, Mode.distill.value)
    teacher = [c for c in setting_columns(distill) if c.startswith(TEACHER_RECIPE_PREFIX)]
    teacher_fixed = _fixed_values(distill, teacher)
    if teacher_fixed:
        text += f" The teacher's own recipe: {group_text(teacher_fixed, TEACHER_RECIPE_PREFIX)}."
    return text


def group_text(fixed: dict[str, str], prefix: str) -> str:
    """``"optimizer SGD (lr 0.1, momentum 0.9)"``: the ``fixed`` values under ``prefix``, named by their
    ``_target_``, nested groups in the same form (other ``_``-keys left out)."""
    entries = {key.removeprefix(prefix): value for key, value in fixed.items() if key.startswith(prefix)}
    name = entries.pop("_target_", None)
    parts = [f"{key} {value}" for key, value in entries.items() if "." not in key and not key.startswith("_")]
    parts += [group_text(fixed, f"{prefix}{sub}.") for sub in sorted({k.split(".", 1)[0] for k in entries if "." in k})]
    label = prefix.rstrip(".").rsplit(".", 1)[-1]
    head = f"{label} {name}" if name else label
    return f"{head} ({', '.join(parts)})" if parts else head


def _fixed_values(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, str]:
    """``column -> value text`` of the columns with one value in every run of ``frame`` (``_target_``: its class)."""
    moving = set(varying_columns(frame, columns))
    fixed = {}
    for column in sorted(columns):
        present = frame[column].dropna() if column in frame.columns else pd.Series(dtype=object)
        if column in moving or len(present) < len(frame) or present.empty or is_bookkeeping(column):
            continue
        value = present.iloc[0]
        text = format_value(value)
        fixed[column] = text.rsplit(".", 1)[-1] if column.endswith("._target_") else text
    return fixed


def _data_text(compared: pd.DataFrame, fixed: dict[str, str]) -> str:
    """``"cifar10, 45,000 train / 5,000 validation / 10,000 test images (val_fraction 0.1)"`` (the sizes when the
    runs recorded them)."""
    names = compared.get("dataset.name", pd.Series(dtype=object)).dropna()
    text = ", ".join(sorted({format_value(v) for v in names}))
    sizes = []
    for key, label in SPLIT_IMAGES:
        values = _values(compared, key).dropna()
        if len(values) and values.nunique() == 1 and (values.iloc[0] > 0 or key != "val_images"):
            sizes.append(f"{int(values.iloc[0]):,} {label}")
    if sizes:
        text += f", {' / '.join(sizes)} images"
    data = [f"{key.removeprefix('dataset.')} {value}" for key, value in fixed.items() if key in RECIPE_DATA_KEYS]
    return text + (f" ({', '.join(data)})" if data else "")


def _numeric_key(text: str) -> tuple[float, str]:
    try:
        return float(text), text
    except ValueError:
        return math.inf, text


def _claim_note(selected: pd.DataFrame) -> str:
    """Whether the data tell the methods' selected settings apart (:func:`analysis.stats.compare_to_top`), on the
    selection metric."""
    prefix = "val_" if selected.attrs.get("selected_on") == FINAL_VAL_ACC else ""
    items = [(str(row[METHOD]) if row["tied"] == 1 else f"{row[METHOD]} ({row['setting']})", row_interval(row, prefix))
             for row in selected.to_dict("records")]  # fmt: skip
    return claim_sentence(compare_to_top(items), "method", metric_name(prefix))


def setting_claim(ranked: pd.DataFrame) -> str:
    """What the data say about the highest setting of a :func:`analysis.rank_settings` table, on its selection
    metric (:func:`claim_sentence`)."""
    prefix = "val_" if "val_mean" in ranked.columns else ""
    items = [(str(row["setting"]), row_interval(row, prefix)) for row in ranked.to_dict("records")]
    return claim_sentence(compare_to_top(items), "setting", metric_name(prefix))


def row_interval(row: dict, prefix: str) -> Interval:
    """The :class:`Interval` of a rank_settings / compare_methods row on ``prefix`` mean (``""`` test, ``val_``)."""
    mean, n = row.get(f"{prefix}mean", math.nan), int(row.get(f"{prefix}n", row.get("n", 0)) or 0)
    std = row.get(f"{prefix}std", math.nan)
    width = row.get(f"{prefix}ci95", math.nan)
    return Interval(float(mean), float(std), n, float(width))


def metric_name(prefix: str) -> str:
    """``validation accuracy`` for the ``val_`` columns of a ranking, else ``test accuracy``."""
    return "validation accuracy" if prefix == "val_" else "test accuracy"


def claim_sentence(claim: Claim, noun: str, metric: str, bold: bool = False) -> str:
    """One sentence: the best ``noun`` when the data support it, else what it is not distinguishable from."""
    mark = "**" if bold else ""
    if not claim.top:
        return f"No {noun} has a {metric}."
    counts = "/".join(str(n) for n in claim.n)
    if len(claim.top) > 1:
        names = ", ".join(f"{mark}{label}{mark}" for label in claim.top)
        return f"{len(claim.top)} {noun}s tie on the highest mean {metric} ({names}): none is named best."
    top = f"{mark}{claim.top[0]}{mark}"
    if claim.best is not None:
        return (f"Best {noun}: {top}, the highest mean {metric}; its 95% interval lies apart from every other "
                f"{noun}'s (n={counts}).")  # fmt: skip
    if not claim.apart and not claim.overlapping:
        return f"Only one {noun}: {top}; nothing to compare it with."
    others = len(claim.apart) + len(claim.overlapping)
    lead = (f"No other {noun} is distinguishable from {top}" if not claim.apart else
            f"{len(claim.overlapping)} of the {others} other {noun}s are not distinguishable from {top}")  # fmt: skip
    text = f"{lead} (the highest mean {metric}) at n={counts}: their 95% intervals overlap"
    listed = "; ".join(claim.overlapping[:5]) + ("; ..." if len(claim.overlapping) > 5 else "")
    text += f" ({listed}); the data do not support naming a best {noun}."
    needed = seeds_text(claim.seeds)
    if needed.startswith("unknown"):
        return text + f" Seeds needed to tell it from {claim.runner_up}: unknown (fewer than 2 seeds)."
    return text + (f" At the observed spreads, telling it from {claim.runner_up} would take about {needed} seeds "
                   "per setting.")  # fmt: skip


def _fill_note(distill: pd.DataFrame) -> str:
    """The soft-label cache fill on its own line: total seconds and which runs paid them."""
    fill = _values(distill, FILL_SECONDS)
    paid = distill[fill > 0] if len(fill) else distill.head(0)
    if paid.empty:
        return ""
    who = ", ".join(f"{run.get(METHOD, '?')} seed {format_value(run.get(SEED))}: {float(run[FILL_SECONDS]):.2f} s"
                    for _, run in paid.head(8).iterrows())  # fmt: skip
    more = f", ... ({len(paid) - 8} more)" if len(paid) > 8 else ""
    return (f"Soft-label cache fill (the teacher's forward passes over the augmented training epochs, paid once per "
            f"seed by the job that found the cache empty): {float(fill[fill > 0].sum()):.2f} s in {len(paid)} run(s) "
            f"({who}{more}); the seconds per epoch above leave it out.")  # fmt: skip


def _fixed_note(subset: pd.DataFrame) -> str:
    """Each method's hyper-parameters that are the same in all its runs (the setting labels name only what varies)."""
    fixed = {method: text for method, text in fixed_method_settings(subset).items() if text}
    if not fixed:
        return ""
    return "Fixed method settings: " + "; ".join(f"{method}: {text}" for method, text in fixed.items()) + "."


# -- rendering ------------------------------------------------------------------------------------------------

#: Characters LaTeX treats specially in text, and their escapes.
LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
}  # fmt: skip
#: Unicode symbols of the tables, in LaTeX (others pass through: a UTF-8 document shows them).
LATEX_SYMBOLS = {
    "±": r"$\pm$", "α": r"$\alpha$", "β": r"$\beta$", "γ": r"$\gamma$", "→": r"$\rightarrow$", "—": "---",
    "–": "--", "×": r"$\times$", "‖": r"$\|$", "≥": r"$\geq$", "≤": r"$\leq$", "−": "-",
}  # fmt: skip
_LATEX_PATTERN = re.compile("|".join(re.escape(c) for c in (*LATEX_SPECIALS, *LATEX_SYMBOLS)))


def latex_escape(text: object) -> str:
    """``text`` as one line of LaTeX text: every special character escaped, the tables' symbols as LaTeX."""
    line = " ".join(str(text).splitlines())
    return _LATEX_PATTERN.sub(lambda m: LATEX_SPECIALS.get(m.group(0)) or LATEX_SYMBOLS[m.group(0)], line)


def latex_table(table: PaperTable) -> str:
    """A ``table`` environment holding a plain ``tabular`` (no packages needed), the caption and a label."""
    label = "tab:kd-hydra-" + re.sub(r"[^a-z0-9]+", "-", table.setup.slug().lower()).strip("-")
    lines = [
        r"\begin{table}[htbp]",
        r"\centering",
        r"\caption{" + latex_escape(table.caption) + "}",
        r"\label{" + label + "}",
        r"\begin{tabular}{" + "".join(table.aligns) + "}",
        r"\hline",
        " & ".join(latex_escape(h) for h in table.header) + r" \\",
        r"\hline",
        *(" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in table.rows),
        r"\hline",
        r"\end{tabular}",
        r"\end{table}",
    ]
    notes = [f"% {' '.join(note.splitlines())}" for note in table.notes]
    return "\n".join(notes + lines) + "\n"


def latex_document(tables: Iterable[PaperTable]) -> str:
    """table.tex: every setup's table, to ``\\input`` into a paper (UTF-8)."""
    parts = ["% kd-hydra: one table per setup (python -m analysis); a plain tabular, no packages needed.", ""]
    for table in tables:
        parts += [latex_table(table), ""]
    return "\n".join(parts)


# -- results.csv ----------------------------------------------------------------------------------------------

#: Columns :func:`results_table` adds to the runs table (see its docstring).
RESULT_COLUMNS = (
    "setting", "baseline_test_acc", "gain", "seconds_per_epoch", "setting_n", "setting_val_mean", "setting_val_ci95",
    "setting_test_mean", "setting_test_ci95", "setting_best_mean", "setting_best_ci95", "setting_gain_mean",
    "setting_gain_ci95", "setting_gain_n", "setting_vs_highest",
)  # fmt: skip
#: Columns of a ranking row behind each ``setting_*`` column.
_SETTING_SOURCES = {
    "setting_n": "n", "setting_val_mean": "val_mean", "setting_val_ci95": "val_ci95", "setting_test_mean": "mean",
    "setting_test_ci95": "ci95", "setting_best_mean": "best_mean", "setting_best_ci95": "best_ci95",
    "setting_gain_mean": "gain", "setting_gain_ci95": "gain_ci95", "setting_gain_n": "gain_n",
}  # fmt: skip


def results_table(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` (one row per run, as :func:`analysis.load_runs` reads them) plus :data:`RESULT_COLUMNS`.

    Distill runs get their ``setting`` label, ``baseline_test_acc`` and paired ``gain`` (:func:`kd_gain`), their
    setting's statistics over its seeds (``setting_*``: mean and 95% t half-width of validation, last and best test
    accuracy and of the paired gain, the counts) and ``setting_vs_highest`` (``highest``, ``apart`` or ``overlaps``:
    its 95% interval against its setup's highest, on the selection metric). Every training run gets its
    ``seconds_per_epoch`` without the cache fill; a baseline its ``teacher_agreement`` and ``teacher_kl`` with its
    setup's teacher, from the test logits, when exactly one teacher applies.
    """
    table = runs.copy()
    added: dict[str, pd.Series] = {column: pd.Series(None, index=table.index, dtype=object) for column in
                                   RESULT_COLUMNS}  # fmt: skip
    gains = kd_gain(runs).set_index(RUN_DIR)
    if len(gains):
        for column in ("baseline_test_acc", "gain"):
            added[column] = table[RUN_DIR].map(gains[column]).astype(object)
    added["seconds_per_epoch"] = seconds_per_epoch(table).astype(object)
    by = across_setups_by(runs)
    measured: dict[object, set[tuple[float, float]]] = {}
    for setup in distill_setups(runs):
        subset = runs_of_setup(runs, setup)
        _add_settings(added, table, rank_settings(subset, by=by))
        baselines = completed_runs(subset, Mode.student.value)
        agreement, kl = baseline_agreement(baselines, _teacher_run(subset, completed_runs(subset, Mode.distill.value)))
        for index in baselines.index:
            if not math.isnan(agreement[index]):
                measured.setdefault(index, set()).add((agreement[index], kl[index]))
    for column, position in ((AGREEMENT, 0), (KL, 1)):
        values = table[column].astype(object) if column in table.columns else pd.Series(None, index=table.index)
        for index, pairs in measured.items():
            if len(pairs) == 1 and pd.isna(values[index]):
                values[index] = next(iter(pairs))[position]
        table[column] = values
    for column in RESULT_COLUMNS:
        table[column] = added[column]
    return table


def _add_settings(added: dict[str, pd.Series], table: pd.DataFrame, ranked: pd.DataFrame) -> None:
    """Write one setup's ranking rows into the ``setting*`` columns of the runs they average."""
    if ranked.empty:
        return
    prefix = "val_" if "val_mean" in ranked.columns else ""
    top = row_interval(ranked.iloc[0].to_dict(), prefix)
    position = pd.Series(table.index, index=table[RUN_DIR])
    for row in ranked.to_dict("records"):
        own = row_interval(row, prefix)
        verdict = "highest" if row["selected"] else "apart" if distinguishable(top, own) else "overlaps"
        indices = position.reindex(list(row["run_dirs"])).dropna()
        for index in indices:
            added["setting"][index] = row["setting"]
            added["setting_vs_highest"][index] = verdict
            for column, source in _SETTING_SOURCES.items():
                if source in row:
                    added[column][index] = row[source]
