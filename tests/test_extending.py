"""docs/extending.md's examples, run as a user would: each section's files and command as the page shows them.

Every code block with a ``title="<path>"`` is written to that path; the section's ``PYTHONPATH=. kd-hydra``
command runs (made tiny with the test suite's ``TINY`` overrides it does not set), and each
```<override>` is `error: ...``` sentence of the page is checked against the error it gives.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import REPO, TINY, Workspace, read_metrics
from kd_hydra.config.compose import compose, hydra_session
from kd_hydra.config.structured import register_configs
from kd_hydra.errors import ConfigError

PAGE = REPO / "docs" / "extending.md"
_FILE_BLOCK = re.compile(r'```\w+ title="([^"]+)"\n(.*?)```', re.S)
_COMMAND = re.compile(r"```bash\n(PYTHONPATH=\. kd-hydra [^\n]*)\n```")
_REFUSED = re.compile(r"`([^`]+)`\s+is\s+`(error: [^`]+)`")
_COMMAND_PREFIX = ("PYTHONPATH=.", "kd-hydra")


def section(heading: str) -> str:
    """The text of the page's ``## heading`` section."""
    return PAGE.read_text(encoding="utf-8").split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def one_line(text: str) -> str:
    return " ".join(text.split())


class Example:
    """A section's files written under ``root``, its command's arguments and its documented refusals."""

    def __init__(self, heading: str, root: Path) -> None:
        text = section(heading)
        self.files = dict(_FILE_BLOCK.findall(text))
        (command,) = _COMMAND.findall(text)
        tokens = shlex.split(command)
        assert tuple(tokens[:2]) == _COMMAND_PREFIX and tokens[2] == "--config-dir", command
        self.root, self.config_dir, self.overrides = root, root / tokens[3], tokens[4:]
        self.refusals = [(override, one_line(error)) for override, error in _REFUSED.findall(text)]
        for path, code in self.files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(code, encoding="utf-8")

    @property
    def modules(self) -> list[str]:
        return [Path(path).stem for path in self.files if path.endswith(".py") and "/" not in path]

    def arguments(self, *extra: str) -> list[str]:
        """``--config-dir <root>/my_conf``, the page's overrides, ``extra``, and the TINY ones none of them set."""
        given = {item.split("=", 1)[0].lstrip("+") for item in [*self.overrides, *extra]}
        tiny = [item for item in TINY if item.split("=", 1)[0] not in given]
        return ["--config-dir", str(self.config_dir), *self.overrides, *extra, *tiny]


@pytest.fixture
def example(
    tmp_path: Path, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], Example]]:
    """``example(heading)``: that section's files in ``tmp_path``, importable as with ``PYTHONPATH=.``."""
    made: list[Example] = []

    def make(heading: str) -> Example:
        built = Example(heading, tmp_path)
        for name in built.modules:
            monkeypatch.delitem(sys.modules, name, raising=False)
        made.append(built)
        return built

    monkeypatch.syspath_prepend(str(tmp_path))
    workspace.env["PYTHONPATH"] = f"{tmp_path}:{REPO}"
    yield make
    for built in made:
        for name in built.modules:
            sys.modules.pop(name, None)
    register_configs()  # the teacher/student options of kd-hydra's own conf/model only, as before


def check_refusals(example: Example, workspace: Workspace) -> None:
    """Each ``override`` the page says is refused exits 2 with exactly the page's one-line error."""
    assert example.refusals, "the section shows no refused value"
    for number, (override, error) in enumerate(example.refusals):
        _, process = workspace.single(f"refused{number}", *example.arguments(override), expect=2)
        assert process.stderr.strip() == error


def history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_dataset_loader_example(example, workspace: Workspace):
    stripes = example("Add a dataset loader")
    assert "dataset=stripes" in stripes.overrides
    run_dir, process = workspace.single("stripes", *stripes.arguments())
    metrics = read_metrics(run_dir)
    assert metrics["dataset"] == "stripes" and metrics["status"] == "completed"
    assert "1x16x16, 4 classes" in (run_dir / "run.log").read_text()
    assert metrics["teacher_test_acc"] > 50  # learnable: 4 orientations, chance is 25%
    check_refusals(stripes, workspace)


def test_the_architecture_example_and_its_feature_points(example, workspace: Workspace, capsys):
    arch = example("Add an architecture")
    assert "student=tiny_convnet" in arch.overrides and "loss=at" in arch.overrides
    run_dir, _ = workspace.single("tiny", *arch.arguments())
    metrics = read_metrics(run_dir)
    assert metrics["model"] == "my_models.TinyConvNet" and metrics["teacher"] == "deep_cnn"
    rows = history(run_dir)
    assert len(rows) == 2 and all(float(row["train_at"]) > 0 for row in rows)  # the stages were read
    check_refusals(arch, workspace)

    capsys.readouterr()
    exec(compile(arch.files["show_points.py"], "show_points.py", "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out.splitlines()
    text = one_line(section("Add an architecture").split("### Feature points of your model", 1)[1])
    assert printed[0] == re.search(r"prints `(\{[^`]*\})`", text).group(1)
    shapes = re.findall(r"`(\(\d+(?:, \d+)*,?\))`", text.split("and the shapes", 1)[1])
    assert len(shapes) == 4 and all(f": {shape}" in printed[1] for shape in shapes)


def test_one_model_file_gives_a_teacher_and_a_student_option_of_that_config_dir_only(example):
    arch = example("Add an architecture")
    with hydra_session(arch.config_dir) as session:
        assert "tiny_convnet" in session.config_loader.get_group_options("teacher")
        cfg = compose(session, ["teacher=tiny_convnet", "student=tiny_convnet", "teacher.checkpoint=/t.pt"])
    assert cfg.teacher.name == cfg.student.name == "my_models.TinyConvNet" and cfg.student.width == 16
    assert cfg.teacher.checkpoint == "/t.pt" and cfg.student.checkpoint is None  # weights for mode=eval only
    with hydra_session() as session:  # another session, without that directory: its options are gone
        assert "tiny_convnet" not in session.config_loader.get_group_options("student")
        with pytest.raises(ConfigError, match="tiny_convnet"):
            compose(session, ["student=tiny_convnet"])


def test_the_tracker_example(example, workspace: Workspace):
    tracker = example("Add a tracker")
    assert "logger=jsonl" in tracker.overrides
    run_dir, _ = workspace.single("jsonl", *tracker.arguments())
    lines = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert set(lines[0]) == {"run", "group"} and lines[0]["group"] == "runs"
    assert lines[1]["config"]["dataset.name"] == "synthetic" and lines[1]["config"]["logger.jsonl.filename"]
    epochs = [line for line in lines if "epoch" in line]
    rows = history(run_dir)
    assert [line["epoch"] for line in epochs] == [int(row["epoch"]) for row in rows] == [1, 2]
    for line, row in zip(epochs, rows, strict=True):
        assert set(line) == {"epoch"} | {key for key, value in row.items() if value and key != "epoch"}
        for key, value in line.items():
            assert value == pytest.approx(float(row[key]), rel=1e-5)
    metrics = read_metrics(run_dir)
    assert lines[-2]["summary"]["final_test_acc"] == metrics["final_test_acc"]
    assert lines[-1] == {"status": "completed"}
    check_refusals(tracker, workspace)
