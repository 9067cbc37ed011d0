"""Exclusive claims: one writer per run directory or sweep ledger, across processes and machines sharing a file system.

A claim is an ``flock`` file (``<name>.lock``, released by the OS when its holder dies) plus ``<name>.json`` naming the
holder (user, host, pid, since). A second claimant waits, saying who holds it and since when, up to
``KD_HYDRA_CLAIM_TIMEOUT_S`` seconds (default a day), then gives up in one line. A ``<name>.json`` left by a holder that
died is a stale claim: it is taken over, with a line saying so.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from kd_hydra.errors import KDHydraError
from kd_hydra.records.files import write_error, write_json

log = logging.getLogger(__name__)

#: The environment variable holding how long (seconds) a claimant waits for another holder.
TIMEOUT_ENV = "KD_HYDRA_CLAIM_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 24 * 3600.0


class ClaimError(KDHydraError):
    """A run directory or sweep is held by another process for longer than the claim timeout."""


def claim_timeout_s() -> float:
    """``KD_HYDRA_CLAIM_TIMEOUT_S`` (seconds, >= 0), else a day; a bad value is a one-line error."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise KDHydraError(f"{TIMEOUT_ENV}: must be a number of seconds >= 0 (got {text!r})")
    return value


def describe_holder(owner: dict[str, Any] | None) -> str:
    """``pid 123 of alice on host-a since 2024-05-01T10:00:00+00:00``, or ``an unknown process``."""
    if not owner:
        return "an unknown process"
    return f"pid {owner.get('pid')} of {owner.get('user')} on {owner.get('host')} since {owner.get('since')}"


def _read_owner(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return owner if isinstance(owner, dict) else None


def _me() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment (a container without passwd)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return {
        "user": user,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def exclusive(folder: Path, name: str, what: str, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the claim ``<folder>/<name>.lock`` on ``what`` (e.g. ``run directory outputs/x``) while the block runs."""
    folder = Path(folder)
    timeout = claim_timeout_s() if timeout_s is None else timeout_s
    lock_path, owner_path = folder / f"{name}.lock", folder / f"{name}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(lock_path, error) from None
    lock = FileLock(str(lock_path), thread_local=False)
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            holder = describe_holder(_read_owner(owner_path))
            log.warning("waiting for %s: held by %s (waits up to %s=%g s)", what, holder, TIMEOUT_ENV, timeout)
            try:
                lock.acquire(timeout=timeout)
            except Timeout:
                raise ClaimError(
                    f"{folder}: {what} is still held by {describe_holder(_read_owner(owner_path))} after {timeout:g} s "
                    f"({TIMEOUT_ENV}); wait for that process or stop it"
                ) from None
    except OSError as error:
        raise write_error(lock_path, error) from None
    try:
        stale = _read_owner(owner_path)
        if stale is not None:
            log.warning("%s: taking over a stale claim of %s (it no longer holds it)", what, describe_holder(stale))
        write_json(owner_path, _me())
        yield
    finally:
        with contextlib.suppress(OSError):
            owner_path.unlink(missing_ok=True)
        lock.release()
