"""A knowledge base that loaded before, kept by the digest of its content: the fast path.

Parsing the YAML with positions (ruamel's round-trip loader) and validating it is ~98% of
a command's start-up. A knowledge base that loaded *without an error* is pickled into the
user's cache directory under a key that is the SHA-256 of everything its loading depends
on: every ``*.yaml`` file of its release (``knowledge_base_files``: symlinked subdirectories
included, hidden ones and ``__pycache__`` not; relative path and bytes), the parameter
overrides, the versions of the package, of Python and of ruamel.yaml and pydantic, and the
source of the modules that define the loaded objects.
Any change to any of them is a different key, so an entry is never stale; a file with an
error never has an entry (its digest differs from every loaded one), so the full loader
runs and reports file, line and column as always.

Where: ``$MOVEMENT_CDS_CACHE_DIR`` if set (empty: no cache), else
``$XDG_CACHE_HOME/movement-cds`` or ``~/.cache/movement-cds``. The directory is created
private (0700). An entry is read only from a directory and file owned by this user that
nobody else can write (a pickle runs code when read); anything unusable (unwritable,
foreign, corrupt) means "no cache", never an error: the knowledge base is parsed instead.
The service's worker processes find the entry their parent wrote, so they do not parse
the YAML again, and each still builds its own durable-rules ruleset (no engine state
crosses a process).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import stat
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pydantic
import pydantic_core
import ruamel.yaml

__all__ = ["cache_dir", "cache_key", "knowledge_base_files", "read_cached", "write_cached"]

log = logging.getLogger("movement_cds.kb")

_FORMAT = b"movement-cds knowledge-base cache 1"
_ENV = "MOVEMENT_CDS_CACHE_DIR"
# the modules whose classes an entry holds: an edited one (an editable install keeps its
# version) must not read an old entry
_SOURCES = ("_kb_schema.py", "_knowledge_base.py", "_errors.py", "_kb_cache.py")


def cache_dir() -> Path | None:
    """The cache directory in force, or None when the cache is off."""
    where = os.environ.get(_ENV)
    if where is not None:
        return Path(where) if where else None
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory known: no cache
            return None
    return Path(base) / "movement-cds"


def _version() -> str:
    try:
        return metadata.version("movement-cds")
    except metadata.PackageNotFoundError:
        return "unknown"


def cache_key(root: Path, overrides: dict[str, Any]) -> str:
    """SHA-256 of everything a loaded knowledge base depends on (see the module doc)."""
    h = hashlib.sha256(_FORMAT)
    here = Path(__file__).resolve().parent
    h.update(f"\0{_version()}\0{sys.version}\0".encode())
    h.update(f"{ruamel.yaml.__version__}\0{pydantic.VERSION}\0{pydantic_core.__version__}\0"
             .encode())
    h.update(json.dumps(overrides, sort_keys=True, default=repr).encode())
    for name in _SOURCES:
        h.update(b"\0" + (here / name).read_bytes())
    for rel, path in sorted(_yaml_files(root).items()):
        data = path.read_bytes()
        h.update(b"\0" + rel.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def _in_release(name: str) -> bool:
    """A file that is part of a release: not a byte-code or backup file, and not hidden
    unless the loader reads it (it globs ``*.yaml``, which matches ``.name.yaml`` too)."""
    return not name.endswith((".pyc", "~")) and (not name.startswith(".")
                                                 or name.endswith(".yaml"))


def knowledge_base_files(root: Path) -> list[Path]:
    """The files of a knowledge-base directory that make up a release, in a fixed order:
    every file the loader can read, through symlinked directories too (each real directory
    once), without hidden directories, ``__pycache__``, byte-code and backup files. Its
    ``*.yaml`` files make the cache key; all of them, the service's release archive and
    content digest (``cds_service._audit``)."""
    out: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back to a directory already read
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if _in_release(f)]
    return out


def _yaml_files(root: Path) -> dict[str, Path]:
    """The release's ``*.yaml`` files (every one the loader reads: ``NAME.yaml``,
    ``DIR/*.yaml``, through symlinked directories too) by relative path."""
    return {p.relative_to(root).as_posix(): p for p in knowledge_base_files(root)
            if p.name.endswith(".yaml")}


def _private(st: os.stat_result) -> bool:
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def read_cached(key: str) -> Any | None:
    """The object stored under ``key``, or None (no entry, cache off or unusable)."""
    where = cache_dir()
    if where is None:
        return None
    path = where / f"kb-{key}.pickle"
    try:
        if not (_private(where.stat()) and _private(path.stat())):
            log.warning("knowledge-base cache %s is writable by others: not used", where)
            return None
        with path.open("rb") as fh:
            return pickle.load(fh)
    except FileNotFoundError:
        return None
    except Exception as e:  # corrupt or from elsewhere: parse instead, write a new one
        log.warning("knowledge-base cache entry %s unusable (%s): parsing instead",
                    path.name, type(e).__name__)
        return None


def write_cached(key: str, value: Any) -> None:
    """Store ``value`` under ``key`` (atomically: readers see the old entry or the new)."""
    where = cache_dir()
    if where is None:
        return
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(where.stat()):
            return
        fd, tmp = tempfile.mkstemp(prefix=".kb-", suffix=".tmp", dir=where)
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, where / f"kb-{key}.pickle")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except Exception as e:  # read-only home, full disk...: the cache is only an optimisation
        log.debug("knowledge-base cache not written (%s)", type(e).__name__)
