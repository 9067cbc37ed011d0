"""Run-directory files (see :mod:`kd_hydra.records.schema`), each written atomically: temp file, then rename."""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kd_hydra.enums import Mode
from kd_hydra.errors import KDHydraError
from kd_hydra.records import schema

#: Mode of a newly created file before the umask (what ``open(path, "w")`` would use).
NEW_FILE_MODE = 0o666
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (else briefly set and restored)."""
    try:
        with open("/proc/self/status", encoding="utf-8", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o077)  # a strict mask meanwhile: a racing file is never too open
        os.umask(umask)
    return umask


class WriteError(KDHydraError, OSError):
    """A file of a run, cache or ledger cannot be written (a full disk, no permission, a directory or a file in
    the way): one line naming the path; the file it would have replaced is unchanged. An ``OSError`` too."""

    def __str__(self) -> str:
        return str(self.strerror)


def write_error(path: Path, error: OSError) -> WriteError:
    """The one-line :class:`WriteError` of ``error`` while writing ``path``."""
    reason = error.strerror or str(error) or type(error).__name__
    in_the_way = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if in_the_way is not None:
        reason = f"{in_the_way} is a file, expected a directory"
    return WriteError(error.errno, f"{path}: cannot be written ({reason}); nothing recorded there was changed")


def reserve_blocks(path: Path) -> None:
    """Allocate every block of the (sparse) file ``path`` on disk, so that a full disk is an ``OSError`` (ENOSPC)
    naming ``path`` here rather than a fault (SIGBUS) at a write through a memory map; a file system that cannot
    reserve blocks leaves the file sparse."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            if size:
                os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as error:
            if error.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise OSError(error.errno, error.strerror, str(path)) from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    The file gets mode ``0o666 & ~umask``, like a file opened for writing (not mkstemp's 0600). A failure (a
    full disk, an unwritable or odd-typed path) is a :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir() and not path.is_symlink():
            raise IsADirectoryError(errno.EISDIR, "is a directory, expected a file", str(path))
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            if hasattr(os, "fchmod"):  # POSIX only
                os.fchmod(handle.fileno(), NEW_FILE_MODE & ~current_umask())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise write_error(path, error) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(_json_safe(payload), indent=2, sort_keys=False) + "\n")


def metrics_record(**values: Any) -> dict[str, Any]:
    """A metrics.json payload: every key of ``schema.METRICS_KEYS``, None where not given."""
    unknown = set(values) - set(schema.METRICS_KEYS)
    if unknown:
        raise KeyError(f"not metrics.json keys: {sorted(unknown)}")
    record = {key: None for key in schema.METRICS_KEYS}
    record.update(values)
    record["schema_version"] = schema.SCHEMA_VERSION
    return record


class HistoryLog:
    """Per-epoch rows of history.csv (``columns``: :func:`schema.history_columns` of the method's parts);
    the whole file is rewritten atomically after each row."""

    def __init__(self, path: Path | None, columns: Sequence[str] = schema.HISTORY_COLUMNS) -> None:
        self.path = Path(path) if path is not None else None
        self.columns = tuple(columns)
        self.rows: list[dict[str, Any]] = []

    def append(self, row: Mapping[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"not history.csv columns: {sorted(unknown)}")
        self.rows.append({column: row.get(column) for column in self.columns})
        if self.path is not None:
            self.write(self.path)

    def restore(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Start from ``rows`` (a resumed run's finished epochs) and rewrite the file with them."""
        self.rows = []
        for row in rows:
            self.append(row)

    def write(self, path: Path) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if v is None else _format_cell(v)) for k, v in row.items()})
        atomic_write_text(path, buffer.getvalue())


def _format_cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


#: Short names of loss keys in the headline.
HEADLINE_KEY_NAMES = {"temperature": "T"}


def method_description(settings: Mapping[str, Any]) -> str:
    """``kd T=4 alpha=0.9`` from the ``loss.*`` settings of a distill run (true booleans by name only)."""
    parts = [str(settings.get("loss.name"))]
    added_kd_off = not settings.get("loss.add_kd_weight")  # Hinton's term on top of the method: off at weight 0
    for key, value in settings.items():
        name = key.removeprefix("loss.")
        if not key.startswith("loss.") or name == "name" or name.startswith("_") or value is None or value is False:
            continue
        if added_kd_off and name.startswith("add_kd_"):
            continue
        shown = HEADLINE_KEY_NAMES.get(name, name)
        parts.append(
            shown if value is True else f"{shown}={value:g}" if isinstance(value, float) else f"{shown}={value}"
        )
    return " ".join(parts)


def headline(record: Mapping[str, Any], out_dir: Path, prefix: str = "") -> str:
    """One line with the numbers that matter, e.g. for the end of a terminal session or a CI log."""
    if record["mode"] == Mode.eval.value:
        top5 = "" if record.get("final_test_acc_top5") is None else f", top-5 {record['final_test_acc_top5']:.2f}%"
        return (
            f"[kd-hydra] {prefix}eval {record['model']} on {record['dataset']}: test acc "
            f"{record['final_test_acc']:.2f}%{top5} ({record['checkpoint']}) -> {out_dir}"
        )
    what = record["model"] if record["teacher"] is None else f"{record['teacher']} -> {record['model']}"
    loss = ""
    if record["mode"] == Mode.distill.value:
        loss = " " + method_description(record["settings"])
    teacher = "" if record["teacher_test_acc"] is None else f", teacher {record['teacher_test_acc']:.2f}%"
    val = "" if record.get("final_val_acc") is None else f", val {record['final_val_acc']:.2f}%"
    return (
        f"[kd-hydra] {prefix}{record['mode']} {what} on {record['dataset']}{loss}: test acc "
        f"{record['final_test_acc']:.2f}% (best {record['best_test_acc']:.2f}% @ epoch {record['best_epoch']})"
        f"{val}{teacher}, {record['epochs']} epochs, {record['wall_seconds']:.1f}s, "
        f"{record['train_images_per_second']:.0f} img/s -> {out_dir}"
    )
