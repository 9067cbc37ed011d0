"""The documentation stays true: every command it shows parses, every key its reference lists exists.

Commands are the ``python run.py ...`` / ``kd-hydra ...`` lines of code blocks and code spans in
README.md, the hand-written pages under ``docs/`` and the pages the MkDocs hook generates. Each is
checked as the command line checks it before any work (:func:`kd_hydra.config.compose.check_command_line`:
every value of every sweep composed, as ``--cfg job`` would, plus the directory checks). Placeholders
(``<...>``), elisions (``...``) and shell variables are what a reader fills in, so those tokens are left
out; a ``--config-dir`` that the page asks the reader to create is created with the options it names.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra._internal.utils import get_args_parser
from omegaconf import DictConfig, OmegaConf

from kd_hydra.config import compose as preflight
from kd_hydra.config import sources
from kd_hydra.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
sys.path.insert(0, str(DOCS))

from kd_docs.configs import Composer  # noqa: E402
from kd_docs.reference_page import OPTIONS_PREFIX  # noqa: E402
from kd_docs.site import build_pages  # noqa: E402

_PROGRAMS = (("python", "run.py"), ("kd-hydra",))
_COMMAND = re.compile(r"(?:python run\.py|kd-hydra)(?:\s|$)")
_FENCE = re.compile(r"^\s*```")
_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_TABLE_KEY = re.compile(r"^\|\s*`([^`]+)`\s*\|")
_DEFAULT_CONFIG = "(the default config)"
_PRESET = re.compile(r"\bexperiment=[\w.-]+")


@pytest.fixture(scope="module")
def hydra() -> Iterator[object]:
    with preflight.hydra_session() as session:
        yield session


@pytest.fixture(scope="module")
def comp(hydra: object) -> Composer:
    """Compositions cached by overrides, shared by every test of the module."""
    return Composer(hydra)


@pytest.fixture(scope="module")
def generated(comp: Composer) -> dict[str, str]:
    """The generated pages, computed once for the module (as the MkDocs hook computes them)."""
    return build_pages(comp)


@pytest.fixture
def shared_session(hydra: object, comp: Composer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Let check_command_line reuse the module's Hydra session and compositions (a new session costs ~0.2 s)."""
    original_session, original_compose = preflight.hydra_session, preflight.compose

    @contextlib.contextmanager
    def session(config_dir: object = None) -> Iterator[object]:
        if config_dir is None:
            yield hydra
        else:
            with original_session(config_dir) as own:
                yield own

    def compose(session: object, overrides: list[str], config_name: str = sources.CONFIG_NAME) -> DictConfig:
        if session is hydra and config_name == sources.CONFIG_NAME:
            return comp(overrides)
        return original_compose(session, overrides, config_name)

    monkeypatch.setattr(preflight, "hydra_session", session)
    monkeypatch.setattr(preflight, "compose", compose)


def markdown_sources(generated: dict[str, str]) -> dict[str, str]:
    """Name -> Markdown of the README, every hand-written page and every generated page."""
    sources = {"README.md": (REPO / "README.md").read_text(encoding="utf-8")}
    for path in sorted(DOCS.rglob("*.md")):
        if "kd_docs" not in path.parts:
            sources[f"docs/{path.relative_to(DOCS)}"] = path.read_text(encoding="utf-8")
    sources.update({f"docs/{uri} (generated)": text for uri, text in generated.items()})
    return sources


def commands_in(markdown: str) -> list[str]:
    """Every ``python run.py ...`` / ``kd-hydra ...`` command shown: code-block lines and code spans."""
    found: list[str] = []
    in_fence, pending = False, ""
    for line in markdown.splitlines():
        if _FENCE.match(line):
            in_fence, pending = not in_fence, ""
            continue
        if in_fence:
            text = pending + line.strip().removeprefix("$ ")
            pending = text[:-1].rstrip() + " " if text.endswith("\\") else ""
            if not pending and _COMMAND.match(text):
                found.append(text)
            continue
        for span in _SPAN.findall(line):
            if _COMMAND.match(span.strip()):
                found.append(span.strip())
    return found


def arguments(command: str) -> list[str]:
    """The command's arguments without the program, comments, placeholders, elisions and shell variables."""
    tokens = shlex.split(re.sub(r"\S*<[^>]*>\S*", " ", command), comments=True)
    for program in _PROGRAMS:
        if tuple(tokens[: len(program)]) == program:
            tokens = tokens[len(program) :]
            break
    return [token for token in tokens if token != "..." and "$" not in token]


def reader_config_dir(config_dir: str, overrides: list[str], tmp_path: Path) -> str:
    """The ``--config-dir`` a page asks the reader to make, with an empty preset for each option it names."""
    if Path(config_dir).is_dir():
        return config_dir
    made = tmp_path / "reader-conf"
    for override in overrides:
        key, _, value = override.partition("=")
        if (sources.CLONE_CONFIGS / key).is_dir() and not (sources.CLONE_CONFIGS / key / f"{value}.yaml").is_file():
            (made / key).mkdir(parents=True, exist_ok=True)
            (made / key / f"{value}.yaml").write_text("# @package _global_\n{}\n", encoding="utf-8")
    made.mkdir(exist_ok=True)
    return str(made)


def check_command(command: str, tmp_path: Path) -> None:
    """Parse and compose ``command`` as the command line does before any work; raise ConfigError if bad."""
    args = get_args_parser().parse_args(arguments(command))
    config_dir = reader_config_dir(args.config_dir, args.overrides, tmp_path) if args.config_dir else None
    preflight.check_command_line(args.overrides, multirun=args.multirun, config_dir=config_dir)


def listed_keys(markdown: str) -> list[tuple[tuple[str, ...], str]]:
    """(overrides, key) for every key in a table under a ``Valid with:`` line (first column, or the header
    cells of a per-option table, whose rows are options)."""
    listed: list[tuple[tuple[str, ...], str]] = []
    overrides: tuple[str, ...] | None = None
    in_option_rows = False
    for line in markdown.splitlines():
        if line.startswith(OPTIONS_PREFIX):
            rest = line.removeprefix(OPTIONS_PREFIX).strip()
            overrides = () if rest == _DEFAULT_CONFIG else tuple(re.findall(r"`([^`]+)`", rest))
        elif line.startswith("#"):
            overrides = None
        elif not line.startswith("|"):
            in_option_rows = False
        elif overrides is not None and line.startswith("| option |"):
            in_option_rows = True
            listed += [(overrides, key) for key in re.findall(r"`([^`]+)`", line)]
        elif overrides is not None and not in_option_rows:
            match = _TABLE_KEY.match(line)
            if match:
                listed.append((overrides, match.group(1)))
    return listed


def is_preset(override: str) -> bool:
    """Whether ``group=option`` is a preset (``# @package _global_``): it may change other groups' choices."""
    group, _, option = override.partition("=")
    path = sources.CLONE_CONFIGS / group / f"{option}.yaml"
    return path.is_file() and "@package _global_" in path.read_text(encoding="utf-8").split("\n", 1)[0]


def compositions(comp: Composer, overrides: set[str]) -> dict[str, DictConfig]:
    """override -> a config composed with it: presets alone, other options batched one per group."""
    found = {override: comp([override]) for override in overrides if is_preset(override)}
    queues: dict[str, list[str]] = {}
    for override in sorted(overrides - set(found)):
        queues.setdefault(override.partition("=")[0], []).append(override)
    for index in range(max((len(queue) for queue in queues.values()), default=0)):
        batch = [queue[index] for queue in queues.values() if index < len(queue)]
        cfg = comp(batch)
        found.update(dict.fromkeys(batch, cfg))
    return found


def has_key(cfg: DictConfig, key: str) -> bool:
    """Whether the composed config has ``key``; a mandatory ``???`` value counts, and so does a dotted
    dict key such as ``hydra.sweeper.params`` -> ``loss.temperature``."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        parent, leaf = ".".join(parts[:cut]), ".".join(parts[cut:])
        node = OmegaConf.select(cfg, parent, throw_on_missing=False, throw_on_resolution_failure=False) if cut else cfg
        if isinstance(node, DictConfig) and leaf in node.keys():
            return True
    return False


def missing_keys(comp: Composer, listed: list[tuple[tuple[str, ...], str]]) -> list[str]:
    """The listed keys that the config composed with their overrides does not have."""
    configs = compositions(comp, {override for overrides, _ in listed for override in overrides})
    missing = []
    for overrides, key in listed:
        for override in overrides or ("",):
            if not has_key(configs[override] if override else comp(), key):
                missing.append(f"{key} (with {override or 'the default config'})")
    return missing


def command_shape(command: str) -> str:
    """The command without its comment and with its preset's name left out: the presets' tables show one command per
    preset, which differ in the name only."""
    return _PRESET.sub("experiment=*", command.split("#", 1)[0].strip())


def test_every_command_in_the_docs_and_readme_parses(generated, shared_session, comp, tmp_path):
    checked = 0
    failures = []
    seen: set[str] = set()
    for name, markdown in markdown_sources(generated).items():
        for command in commands_in(markdown):
            shape = command_shape(command)
            try:
                if shape in seen:  # shown before (on another page, or for another preset): its preset composes
                    comp(_PRESET.findall(command))
                    continue
                seen.add(shape)
                check_command(command, tmp_path)
            except (ConfigError, SystemExit) as error:
                failures.append(f"{name}: {command}\n    {error}")
            checked += 1
    assert not failures, "\n".join(failures)
    assert checked >= 20  # the README and the pages show dozens; finding none means the extraction broke


def test_every_key_the_reference_lists_exists(generated, comp):
    listed = []
    for uri in ("reference/configuration.md", "reference/presets.md"):
        listed += listed_keys(generated[uri])
    listed += [item for uri, page in generated.items() if uri.startswith("methods/") for item in listed_keys(page)]
    keys = {key for _, key in listed}
    assert {"trainer.epochs", "loss.temperature", "dataset.val_fraction", "soft_label_cache.dtype"} <= keys
    assert not missing_keys(comp, listed)


def test_the_reference_lists_every_key_of_the_default_config(generated, comp):
    """Independently of the generator: every leaf of the default config (outside ``hydra``) is listed."""
    listed = {key for _, key in listed_keys(generated["reference/configuration.md"])}
    cfg = comp()

    def leaves(node: DictConfig, prefix: str) -> Iterator[str]:
        for key in node.keys():
            child = node._get_node(key)
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation() and len(child):
                yield from leaves(child, dotted)
            else:
                yield dotted

    expected = {key for key in leaves(cfg, "") if not key.startswith("hydra.")}
    assert expected and not sorted(expected - listed)


def test_the_checks_fail_on_a_bad_command_or_key(comp, shared_session, tmp_path):
    assert commands_in("run\n```bash\npython run.py -m loss.alpha=0.1,0.5 \\\n  trainer.epochs=2\n```\n") == [
        "python run.py -m loss.alpha=0.1,0.5 trainer.epochs=2"
    ]
    assert arguments("kd-hydra dataset=arrays dataset.path=<your .npz> ...  # a comment") == ["dataset=arrays"]
    with pytest.raises(ConfigError, match="trainer.nope"):
        check_command("python run.py trainer.nope=1", tmp_path)
    with pytest.raises(ConfigError, match="teacher"):
        check_command("kd-hydra teacher=no_such_arch", tmp_path)
    with pytest.raises(ConfigError, match="is a sweep"):
        check_command("python run.py loss.temperature=1,2", tmp_path)
    page = f"{OPTIONS_PREFIX}`loss=kd`\n\n| key | type |\n| --- | --- |\n| `loss.temperature` | float |\n"
    page += "| `loss.nope` | x |\n"
    assert missing_keys(comp, listed_keys(page)) == ["loss.nope (with loss=kd)"]


def test_every_method_has_its_page(generated):
    names = sorted(path.stem for path in (sources.CLONE_CONFIGS / "loss").glob("*.yaml"))
    assert {"kd", "dkd", "fitnet"} <= set(names)
    for name in names:
        page = generated[f"methods/{name}.md"]
        assert page.startswith(f"# loss={name}\n")
        assert f"`loss={name}`" in page
        assert f"]({name}.md)" in generated["methods/index.md"]


def test_the_docs_document_every_group_option_and_trainer_key(generated):
    """Every option file of the user-facing groups and every trainer key is named in the reference (moved from
    the README, which is now the short front page)."""
    reference = generated["reference/configuration.md"] + generated["reference/presets.md"]
    for group in ("dataset", "teacher", "student", "loss", "optimizer", "scheduler", "experiment", "hydra/launcher"):
        folder = "model" if group in ("teacher", "student") else group  # those options are made from conf/model
        options = sorted(path.stem for path in (sources.CLONE_CONFIGS / folder).glob("*.yaml"))
        assert options, f"no options found for {group}"
        missing = [option for option in options if f"`{option}`" not in reference]
        assert not missing, f"{group} options missing from the configuration reference: {missing}"
    trainer_keys = list(OmegaConf.load(sources.CLONE_CONFIGS / "trainer" / "default.yaml").keys())
    assert "epochs" in trainer_keys
    assert not [key for key in trainer_keys if f"`trainer.{key}`" not in reference]


def test_the_readme_is_the_front_page():
    """The README opens with the offline quickstart, keeps CI's install and test commands, and links into the docs."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    headings = [line for line in readme.splitlines() if line.startswith("## ")]
    assert headings[0].startswith("## Quickstart (offline)")
    assert 'pip install -e ".[dev]"' in readme and "python -m pytest -q" in readme
    for page in ("getting-started", "concepts", "recipes", "outputs", "errors", "api", "development"):
        assert f"(docs/{page}.md" in readme and (DOCS / f"{page}.md").is_file()
    assert "download" in readme.split("## On CIFAR", 1)[1].split("\n## ", 1)[0]


def test_the_docs_hold_no_drift(generated):
    """Names the code no longer uses, code constants instead of values, a repeated sentence, a development-only file."""
    from kd_docs.schema_page import history_table, metrics_table

    pages = markdown_sources(generated)
    for name, page in pages.items():
        assert "meta.json" not in page, f"{name}: the stores seal their entries with seal.json"
        assert "`sweeper.py`" not in page and "../shared/data" not in page, name
        if "generated" not in name:
            prose = [line for line in page.splitlines() if line and not line.startswith(("|", "#", " ", "`"))]
            sentences = [s for s in re.split(r"(?<=[.:])\s+", " ".join(prose)) if len(s) > 60]
            repeated = sorted({s for s in sentences if sentences.count(s) > 1})
            assert not repeated, f"{name} repeats: {repeated[:1]}"
    schema_tables = metrics_table() + history_table()
    assert not re.search(r"\b[A-Z0-9]+_[A-Z0-9_]+\b", schema_tables.split("\n", 1)[1]), "values, not code constants"
    reference = generated["reference/configuration.md"]
    arrays = reference.split("`dataset=arrays`", 1)[1].split("\n### ", 1)[0]
    assert "`dataset.in_memory`" not in arrays, "arrays refuses in_memory=false: the reference does not offer it"
    assert "make_cifar10_prefix.py --archive" in pages["docs/concepts.md"]
