"""One content-addressed cache entry: a directory named by a digest, written under a lock, sealed, verified.

Used by the teacher store, the soft-label cache, the decoded image store and the teacher evaluations.
An entry's files are written atomically; its seal (``seal.json``, written last) holds the SHA-256 of every
file and any metadata. A reader trusts an entry only when the seal is there and every file matches it.
The lock is an ``flock`` file beside the entry: released by the OS when its holder dies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from kd_hydra.errors import CheckpointError, ConfigError
from kd_hydra.records.files import atomic_write_bytes, write_json
from kd_hydra.records.identity import digest

log = logging.getLogger(__name__)

SEAL_FILE = "seal.json"
LOCK_SUFFIX = ".lock"
HASH_CHUNK_BYTES = 1 << 20
#: How long a job waits for another process working on the same entry before giving up.
DEFAULT_LOCK_TIMEOUT_S = 24 * 3600.0
KEY_DIGITS = 16
#: The seal's key holding what the entry's key digests: checked on every read, so that a moved entry is never served.
DESCRIPTION_KEY = "description"


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def _plain_json(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists, keys as text): how a seal records it."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def entry_name(description: Mapping[str, Any], label: str = "", digits: int = KEY_DIGITS) -> str:
    """``<label>-<digest>`` (or the digest alone) of the description that determines an entry's content."""
    key = digest(description)[:digits]
    return f"{label}-{key}" if label else key


class CacheEntry:
    """The directory ``path`` of one cache entry; ``root_key`` is the config key named when it cannot be written."""

    def __init__(
        self, path: Path, root_key: str = "paths.cache_dir", lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
    ) -> None:
        self.path = Path(path)
        self.root_key = root_key
        self.lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"CacheEntry({str(self.path)!r})"

    @contextlib.contextmanager
    def locked(self, activity: str = "working on this entry") -> Iterator[None]:
        """Hold the entry's lock (other processes wait); one-line errors for a timeout or an unwritable root."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                self.root_key, f"{self.path.parent}: cannot be created ({error.strerror or error}); use a writable one"
            ) from None
        lock = FileLock(str(self.path) + LOCK_SUFFIX, timeout=self.lock_timeout_s)
        try:
            lock.acquire()
        except Timeout:
            raise CheckpointError(
                f"{lock.lock_file}: another job has been {activity} for over {self.lock_timeout_s:g} s "
                "(the lock is freed when it ends or dies); wait for it or remove that job"
            ) from None
        except OSError as error:
            raise ConfigError(
                self.root_key,
                f"{self.path.parent}: cannot create a lock file ({error.strerror or error}); use a writable directory",
            ) from None
        try:
            yield
        finally:
            lock.release()

    def file(self, name: str) -> Path:
        return self.path / name

    def write(self, name: str, data: bytes) -> str:
        """Write one file of the entry atomically; returns its SHA-256."""
        atomic_write_bytes(self.file(name), data)
        return hashlib.sha256(data).hexdigest()

    def seal(self, files: Mapping[str, str], **meta: Any) -> None:
        """Write the seal last: the SHA-256 of each file (``name -> sha256``) and ``meta``."""
        write_json(self.file(SEAL_FILE), {"files": dict(files), **meta})

    def unseal(self) -> None:
        """Remove the seal: the entry is no longer trusted (its files stay, e.g. for a resumed training)."""
        self.file(SEAL_FILE).unlink(missing_ok=True)

    @property
    def is_sealed(self) -> bool:
        return self.file(SEAL_FILE).is_file()

    def verified(self) -> tuple[dict[str, Any] | None, str]:
        """``(seal, "")`` when the entry is sealed and every file matches it; ``(None, why)`` otherwise
        (``why`` is empty for an entry that was never sealed)."""
        seal_path = self.file(SEAL_FILE)
        if not seal_path.is_file():
            return None, ""
        try:
            seal = json.loads(seal_path.read_text())
            files = seal.get("files") if isinstance(seal, Mapping) else None
            if not isinstance(files, Mapping) or not files:
                return None, f"{SEAL_FILE} lists no files"
            for name, expected in files.items():
                if not self.file(name).is_file() or file_sha256(self.file(name)) != expected:
                    return None, f"{name} does not match its seal"
        except (OSError, ValueError) as error:
            return None, f"unreadable {SEAL_FILE} ({type(error).__name__})"
        return dict(seal), ""

    def open(self, quiet: bool = False, describes: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The seal's content when the entry is sealed, every file matches it and (with ``describes``) its
        recorded ``description`` is ``describes``; None otherwise.

        A damaged entry (a file missing, changed, or an unreadable seal) is logged unless ``quiet``; an entry
        that describes something else (placed under another key) is always logged: it is never served.
        """
        seal, problem = self.verified()
        if problem and not quiet:
            log.warning("cache entry %s is damaged (%s); it will be rebuilt", self.path, problem)
        if seal is not None and describes is not None and not self.describes(seal, describes):
            return None
        return seal

    def describes(self, seal: Mapping[str, Any], description: Mapping[str, Any], quiet: bool = False) -> bool:
        """Whether ``seal`` records ``description`` (what the entry's key digests); a mismatch is logged unless
        ``quiet``."""
        if _plain_json(seal.get(DESCRIPTION_KEY)) == _plain_json(description):
            return True
        if quiet:
            return False
        log.warning(
            "cache entry %s does not hold what its key names (its seal records another %s); it is not used "
            "and will be rebuilt",
            self.path,
            "description" if seal.get(DESCRIPTION_KEY) is not None else "entry: none",
        )
        return False

    def add_sealed(self, name: str, data: bytes, description: Mapping[str, Any] | None = None) -> None:
        """Write one more file and add it to the seal (hold :meth:`locked` around it): entries that grow.
        A new seal records ``description`` (what the key digests)."""
        sha = self.write(name, data)
        seal = self._read_seal() or {"files": {}, DESCRIPTION_KEY: _plain_json(description)}
        seal["files"][name] = sha
        write_json(self.file(SEAL_FILE), seal)

    def add_files_to_seal(self, files: Mapping[str, str], description: Mapping[str, Any] | None = None) -> None:
        """Add files already written (``name -> sha256``) to the seal (hold :meth:`locked` around it); a new seal
        records ``description``. For files too large to pass through :meth:`add_sealed` as bytes."""
        seal = self._read_seal() or {"files": {}, DESCRIPTION_KEY: _plain_json(description)}
        seal["files"].update(files)
        write_json(self.file(SEAL_FILE), seal)

    def read_seal(self) -> dict[str, Any] | None:
        """The seal's content, its files not hashed (None when unsealed or unreadable): what the entry says it holds,
        cheap enough to compare with the key at every read."""
        return self._read_seal()

    def sealed_files(self) -> dict[str, str]:
        """``name -> sha256`` of the files the seal lists (empty when unsealed or unreadable)."""
        seal = self._read_seal()
        return dict(seal["files"]) if seal is not None else {}

    def read_sealed(self, name: str) -> bytes | None:
        """The bytes of file ``name`` if the seal lists it with this content; None (logged when damaged) if not."""
        seal = self._read_seal()
        expected = (seal or {}).get("files", {}).get(name)
        if expected is None or not self.file(name).is_file():
            return None
        data = self.file(name).read_bytes()
        if hashlib.sha256(data).hexdigest() != expected:
            log.warning("cache file %s changed since it was sealed; it will be rebuilt", self.file(name))
            return None
        return data

    def _read_seal(self) -> dict[str, Any] | None:
        try:
            seal = json.loads(self.file(SEAL_FILE).read_text())
        except (OSError, ValueError):
            return None
        return seal if isinstance(seal, dict) and isinstance(seal.get("files"), dict) else None

    def writable_root(self) -> None:
        """Check that the entry's parent directory can be written; a one-line ConfigError naming ``root_key``."""
        root = self.path.parent
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".write-probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise ConfigError(
                self.root_key, f"{root}: cannot be written ({error.strerror or error}); set it to a writable directory"
            ) from None
