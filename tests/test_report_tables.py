"""The report's statistics and paper tables (issue 24): paired-gain intervals, claims the data support, the recipe
caption, best and last accuracy, cost with the cache fill apart, agreement and ECE, LaTeX and Markdown exports,
Optuna searches drawn as samples. Hand-made run directories (analysis_fixtures.py), no training."""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR.parent) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR.parent))
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import analysis  # noqa: E402
from analysis import load_runs, write_report  # noqa: E402
from analysis.logits import agreement_and_kl  # noqa: E402
from analysis.stats import (  # noqa: E402
    Interval,
    compare_to_top,
    distinguishable,
    interval,
    seeds_needed,
    seeds_to_exclude_zero,
    t_quantile_975,
)
from analysis.tables import latex_escape  # noqa: E402
from analysis_fixtures import (  # noqa: E402
    PAPER_APART,
    PAPER_BASELINE,
    PAPER_BASELINE_LOGITS,
    PAPER_DKD_WARNING,
    PAPER_FILL_SECONDS,
    PAPER_METHODS,
    PAPER_TEACHER,
    PAPER_TEACHER_LOGITS,
    PAPER_TRAIN_SECONDS,
    make_config,
    make_metrics,
    write_paper_sweep,
    write_run,
)

T_975_DF1 = 12.706204736174696  # t_{0.975, 1}, from a t table
T_975_DF2 = 4.302652729749464  # t_{0.975, 2}


# --- the statistics ----------------------------------------------------------------------------------------


def test_interval_by_hand() -> None:
    value = interval([70.0, 72.0, 77.0, None, "text"])  # mean 73, variance (9 + 1 + 16) / 2 = 13
    assert (value.mean, value.n) == (73.0, 3) and value.std == pytest.approx(math.sqrt(13.0))
    assert value.half_width == pytest.approx(T_975_DF2 * math.sqrt(13.0) / math.sqrt(3.0))
    assert value.low == pytest.approx(73.0 - value.half_width) and value.has_width
    single = interval([70.0])
    assert single.n == 1 and math.isnan(single.half_width) and not single.has_width
    assert t_quantile_975(1) == pytest.approx(T_975_DF1) and math.isnan(t_quantile_975(0))


def test_distinguishable_means_intervals_that_do_not_overlap() -> None:
    a = Interval(mean=80.0, std=1.0, n=3, half_width=1.0)  # [79, 81]
    assert distinguishable(a, Interval(77.5, 1.0, 3, 1.0))  # [76.5, 78.5]: apart
    assert not distinguishable(a, Interval(78.5, 1.0, 3, 1.0))  # [77.5, 79.5]: overlaps
    assert not distinguishable(a, Interval(10.0, math.nan, 1, math.nan))  # one seed: no interval, never apart


def test_seeds_needed_is_the_smallest_n_whose_intervals_stop_overlapping() -> None:
    # spreads 1 and 0.5, gap 2: t_{.975,n-1} * 1.5 / sqrt(n) is 2.39 at n = 4 and 1.86 at n = 5
    a, b = Interval(82.0, 1.0, 2, math.nan), Interval(80.0, 0.5, 2, math.nan)
    expected = next(n for n in range(2, 100) if t_quantile_975(n - 1) * 1.5 / math.sqrt(n) < 2.0)
    assert seeds_needed(a, b) == expected == 5
    assert math.isinf(seeds_needed(a, Interval(82.0, 1.0, 2, math.nan)))  # equal means: never
    assert math.isnan(seeds_needed(a, Interval(70.0, math.nan, 1, math.nan)))  # one seed: spread unknown
    gain = Interval(mean=3.64, std=3.34, n=2, half_width=math.nan)  # kd's per-seed gains +6.00 and +1.28
    assert seeds_to_exclude_zero(gain) == next(
        n for n in range(2, 100) if t_quantile_975(n - 1) * 3.34 / math.sqrt(n) < 3.64
    )


def test_a_best_is_named_only_when_apart_from_every_other() -> None:
    apart = compare_to_top([("kd", Interval(90.0, 0.2, 3, 0.5)), ("dkd", Interval(80.0, 0.2, 3, 0.5))])
    assert apart.best == "kd" and apart.apart == ("dkd",) and not apart.overlapping
    close = compare_to_top([("kd", Interval(82.0, 2.8, 2, 25.4)), ("dkd", Interval(81.3, 3.2, 2, 28.6)),
                            ("crd", Interval(90.0, 1.0, 2, 1.0)), ("at", Interval(60.0, 0.1, 2, 0.5))])  # fmt: skip
    assert close.best is None and close.top == ("crd",) and close.overlapping == ("kd", "dkd")
    assert close.apart == ("at",) and close.runner_up == "kd"
    tie = compare_to_top([("a", Interval(80.0, 0.1, 3, 0.1)), ("b", Interval(80.0, 0.1, 3, 0.1))])
    assert tie.best is None and tie.top == ("a", "b")


# --- the report of a method sweep: intervals overlap at n=2 -----------------------------------------------


@pytest.fixture(scope="module")
def paper_out(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """write_report of the paper-style kd / dkd / crd sweep (2 seeds, overlapping intervals)."""
    root = tmp_path_factory.mktemp("paper")
    return write_report(write_paper_sweep(root / "sweep"), root / "out")


def test_overlapping_intervals_name_no_best_method_and_show_paired_gain_intervals(paper_out: dict[str, Path]) -> None:
    report = paper_out["report"].read_text()
    assert "Best method" not in report and "Best setting" not in report
    assert "No other method is distinguishable from kd (the highest mean validation accuracy) at n=2" in report
    assert "the data do not support naming a best method" in report
    # kd's paired gains over the same-seed baselines: 80 - 76 = 4 and 84 - 77 = 7
    gains = [PAPER_METHODS["kd"][seed][0] - PAPER_BASELINE[seed][0] for seed in (0, 1)]
    half = T_975_DF1 * abs(gains[0] - gains[1]) / 2  # t * s / sqrt(2) with s = |a - b| / sqrt(2)
    assert f"| +{sum(gains) / 2:.2f} ± {half:.2f} |" in report
    seeds = re.search(r"telling it from dkd would take about (\d+) seeds", report)
    assert seeds is not None and int(seeds.group(1)) > 2
    # the same report carries the warning of the dkd runs shorter than their warm-up (teacher, 2 baselines, 6 distill)
    warnings = report.split("## Warnings", 1)[1].split("\n## ", 1)[0]
    assert f"- {PAPER_DKD_WARNING} (2 of 9 runs)" in warnings


def test_the_report_holds_what_a_paper_table_needs(paper_out: dict[str, Path]) -> None:
    report = paper_out["report"].read_text()
    assert "Recipe of every compared run: cifar10, 45,000 train / 5,000 validation / 10,000 test images" in report
    assert "trainer (batch_size 128, epochs 3" in report and "optimizer (lr 0.1, momentum 0.9, name sgd)" in report
    header = next(line for line in report.splitlines() if line.startswith("| model | setting (what varies) |"))
    for column in ("val acc (%)", "test acc, last epoch (%)", "test acc, best epoch (%)", "gain, paired (pp)",
                   "top-1 agreement with teacher (%)", "KL(teacher‖student) (nats)", "ECE (%)", "MACs / image",
                   "method parameters", "s / epoch (cache fill apart)"):  # fmt: skip
        assert column in header, column
    teacher = next(line for line in report.splitlines() if line.startswith("| teacher | — |"))
    assert f"| {PAPER_TEACHER['final_val_acc']:.2f} | {PAPER_TEACHER['final_test_acc']:.2f} | " in teacher
    assert f"| {PAPER_TEACHER['best_test_acc']:.2f} |" in teacher and "| 125 M |" in teacher
    kd = next(line for line in report.splitlines() if line.startswith("| kd |"))
    last, best = (interval([PAPER_METHODS["kd"][s][i] for s in (0, 1)]) for i in (0, 1))
    assert f"| {last.mean:.2f} ± {last.half_width:.2f} | {best.mean:.2f} ± {best.half_width:.2f} |" in kd
    # cost: kd's seed 0 paid the cache fill; per epoch without it: (30 - 6) / 3 and 30 / 3
    cost = interval([(PAPER_TRAIN_SECONDS - PAPER_FILL_SECONDS) / 3, PAPER_TRAIN_SECONDS / 3])
    assert kd.endswith(f"| {cost.mean:.2f} ± {cost.half_width:.2f} |")
    assert "Soft-label cache fill (" in report and f"{PAPER_FILL_SECONDS:.2f} s in 1 run(s) (kd seed 0" in report
    assert "Fixed method settings: crd: feat_dim = 128" in report and "kd: T = 4, α = 0.9." in report
    assert "| kd | — |" in kd  # one kd setting: nothing varies, nothing repeated on the row


def test_baseline_agreement_with_the_setup_teacher_comes_from_the_test_logits(paper_out: dict[str, Path]) -> None:
    teacher = np.asarray(PAPER_TEACHER_LOGITS, dtype=np.float16).astype(np.float64)
    student = np.asarray(PAPER_BASELINE_LOGITS, dtype=np.float16).astype(np.float64)
    agrees = [int(np.argmax(s) == np.argmax(t)) for s, t in zip(student, teacher, strict=True)]
    kl = []
    for s, t in zip(student, teacher, strict=True):
        p, q = np.exp(t) / np.exp(t).sum(), np.exp(s) / np.exp(s).sum()
        kl.append(float(np.sum(p * np.log(p / q))))
    assert agrees == [1, 1, 0, 1]
    expected_agreement, expected_kl = 100.0 * sum(agrees) / 4, sum(kl) / 4
    assert agreement_and_kl(student, teacher) == pytest.approx((expected_agreement, expected_kl))
    baseline = next(line for line in paper_out["report"].read_text().splitlines() if line.startswith("| baseline"))
    assert f"| {expected_agreement:.2f} ± 0.00 | {expected_kl:.3f} ± 0.000 |" in baseline
    results = pd.read_csv(paper_out["results"])
    baselines = results[results["mode"] == "student"]
    assert baselines["teacher_agreement"].tolist() == pytest.approx([expected_agreement] * 2)
    assert baselines["teacher_kl"].tolist() == pytest.approx([expected_kl] * 2)


def test_results_csv_carries_the_paired_gains_and_each_settings_statistics(paper_out: dict[str, Path]) -> None:
    results = pd.read_csv(paper_out["results"])
    for column in analysis.tables.RESULT_COLUMNS:
        assert column in results.columns, column
    crd = results[(results["mode"] == "distill") & (results["loss.name"] == "crd")].sort_values("trainer.seed")
    gains = [PAPER_METHODS["crd"][s][0] - PAPER_BASELINE[s][0] for s in (0, 1)]
    assert crd["gain"].tolist() == pytest.approx(gains)
    assert crd["setting_gain_ci95"].tolist() == pytest.approx([T_975_DF1 * abs(gains[0] - gains[1]) / 2] * 2)
    val = interval([PAPER_METHODS["crd"][s][2] for s in (0, 1)])
    assert crd["setting_val_ci95"].tolist() == pytest.approx([val.half_width] * 2)
    assert set(results.loc[results["mode"] == "distill", "setting_vs_highest"]) == {"highest", "overlaps"}
    kd = results[(results["loss.name"] == "kd") & (results["mode"] == "distill")].sort_values("trainer.seed")
    assert kd["seconds_per_epoch"].tolist() == pytest.approx([8.0, 10.0])


def test_a_method_far_ahead_with_three_seeds_is_named_best(tmp_path: Path) -> None:
    written = write_report(write_paper_sweep(tmp_path / "sweep", PAPER_APART), tmp_path / "out")
    report = written["report"].read_text()
    assert "Best method: kd, the highest mean validation accuracy" in report
    assert "Best setting: kd" in report and "not distinguishable" not in report


# --- exports ------------------------------------------------------------------------------------------------


def unescaped(text: str, char: str) -> list[int]:
    """Positions of ``char`` in ``text`` not preceded by a backslash."""
    return [i for i, c in enumerate(text) if c == char and (i == 0 or text[i - 1] != "\\")]


def check_latex_tables(tex: str) -> list[list[str]]:
    """Parse table.tex without a TeX engine: balanced braces and environments, every row of its spec's width,
    specials escaped; returns the rows' cells of every tabular."""
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    depth = 0
    for index in range(len(body)):
        if body[index] == "{" and index not in _escaped(body, index):
            depth += 1
        elif body[index] == "}" and index not in _escaped(body, index):
            depth -= 1
        assert depth >= 0, body[max(0, index - 40) : index + 1]
    assert depth == 0
    assert body.count(r"\begin{tabular}") == body.count(r"\end{tabular}") >= 1
    assert body.count(r"\begin{table}") == body.count(r"\end{table}") == body.count(r"\begin{tabular}")
    for char in ("_", "%", "#"):
        assert not unescaped(body, char), char
    assert len(unescaped(body, "$")) % 2 == 0
    tables = []
    for match in re.finditer(r"\\begin\{tabular\}\{([lrc]+)\}\n(.*?)\\end\{tabular\}", body, re.S):
        width = len(match.group(1))
        rows = [line for line in match.group(2).splitlines() if line.endswith(r"\\")]
        assert rows, "a tabular without rows"
        cells = []
        for row in rows:
            separators = unescaped(row, "&")
            assert len(separators) == width - 1, row
            cells.append([cell.strip() for cell in re.split(r"(?<!\\)&", row.removesuffix(r"\\"))])
        tables.append(cells)
    return tables


def _escaped(text: str, index: int) -> set[int]:
    return {index} if index > 0 and text[index - 1] == "\\" else set()


def test_latex_and_markdown_tables_parse(tmp_path: Path) -> None:
    written = write_report(write_paper_sweep(tmp_path / "sweep", student="res_net#8&50%"), tmp_path / "out")
    tex = written["table_tex"].read_text()
    (table,) = check_latex_tables(tex)
    assert table[0][:3] == ["model", "setting (what varies)", "architecture"]
    assert [row[0] for row in table[1:]] == ["teacher", "baseline (CE only)", "kd", "dkd", "crd"]
    assert table[3][2] == r"res\_net\#8\&50\%" and r"$\pm$" in table[3][9]
    assert r"\caption{cifar10: resnet56 $\rightarrow$ res\_net\#8\&50\%. Recipe of every compared run" in tex
    markdown = written["table_md"].read_text()
    assert markdown.startswith("# Distillation results") and "**Table 1.**" in markdown
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len({line.count(" | ") for line in lines}) == 1 and len(lines) == 7  # header, rule, 5 rows
    assert "res_net#8&amp;50%" in markdown


def test_latex_escape() -> None:
    assert latex_escape("a_b & 5% #1 {x} ~ ^ \\ $") == (
        r"a\_b \& 5\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{} \$"
    )
    assert latex_escape("T = 4, α = 0.9 ± 1\nnext") == r"T = 4, $\alpha$ = 0.9 $\pm$ 1 next"


# --- Optuna searches are drawn as samples -------------------------------------------------------------------

OPTUNA_HYDRA = "hydra:\n  sweeper:\n    _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper\n"


def test_an_optuna_search_is_drawn_as_samples_not_a_grid(tmp_path: Path) -> None:
    trials = [(1.0 + 0.6 * i, 0.1 + 0.07 * i, 60.0 + i, 70.0 - abs(i - 5)) for i in range(12)]
    for index, (temperature, alpha, test, val) in enumerate(trials):
        config = make_config("distill", 0, temperature, alpha)
        run = write_run(tmp_path / "search" / str(index), config, make_metrics(config, test, final_val_acc=val))
        (run / ".hydra" / "hydra.yaml").write_text(OPTUNA_HYDRA)
    runs = load_runs(tmp_path / "search")
    assert analysis.load.is_search(runs).all()
    fig = analysis.plot_search_samples(runs)
    assert [ax.get_xlabel() for ax in fig.axes] == ["temperature T", "α (weight of the KD term)"]
    assert all(len(ax.collections[0].get_offsets()) == len(trials) for ax in fig.axes)
    assert "Optuna search, 12 trials" in fig.get_suptitle()
    written = write_report(tmp_path / "search", tmp_path / "out")
    assert "search_samples" in written and "heatmap" not in written
    report = written["report"].read_text()
    assert "<code>heatmap.png</code>" in report  # left out: not a grid
    with pytest.raises(analysis.NotApplicable, match="not an Optuna search"):
        analysis.plot_search_samples(load_runs(write_paper_sweep(tmp_path / "grid")))
