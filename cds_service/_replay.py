"""The ``jti`` replay cache of the CDS Hooks service (spec point C19, last check).

A client JWT may be used once. With ``movement-cds serve --workers N`` every worker is its
own process, so the cache cannot live in a worker's memory (issue 13, finding 1: with two
workers one token was accepted twice). It is a SQLite file on local disk instead, shared by
every worker of the host and kept across a restart:

* one row per ``(iss, jti)`` (the primary key), with the instant after which the token could
  no longer pass the expiry check anyway (``exp`` plus the leeway);
* "remember, or say it was seen" is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` in
  autocommit mode: SQLite runs it atomically across processes, so of N concurrent uses of
  one token exactly one succeeds; a row whose time has passed may be taken over by a new
  token with the same ``jti`` (the old one can no longer be accepted);
* WAL journal (readers never wait for the writer), ``synchronous=NORMAL`` (a committed row
  survives a crash of the process; the service restarting is the case that matters here);
* expired rows are purged at most once a second per process, and the table is kept to about
  ``max_entries`` rows by dropping the rows closest to expiry (they could be replayed for the
  fewest seconds). Size ``max_entries`` above the calls one token lifetime can bring.

Any SQLite failure (disk full, file locked beyond ``busy_timeout_seconds``) makes
:meth:`ReplayCache.remember` raise :class:`ReplayStoreError`: the caller refuses the token
(fail closed), never accepts it unchecked. The file holds issuer URLs, token ids and
instants; no token, no patient data.

Several hosts: :func:`open_replay_cache` with a ``postgresql://`` URL gives
``cds_service._pg_store.PostgresReplayCache``, the same cache in the shared database.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Final, Protocol

from cds_service._errors import ReplayStoreError

__all__ = ["ReplayCache", "ReplayStoreError", "UsedTokens", "open_replay_cache"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS used_token (
    iss TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (iss, jti)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS used_token_expires ON used_token (expires);
"""
_REMEMBER: Final = """
INSERT INTO used_token (iss, jti, expires) VALUES (?, ?, ?)
ON CONFLICT (iss, jti) DO UPDATE SET expires = excluded.expires
WHERE used_token.expires < ?
"""
_PURGE_EVERY_SECONDS: Final = 1.0


class UsedTokens(Protocol):
    """A replay cache: :class:`ReplayCache` or the PostgreSQL one."""

    def remember(self, iss: str, jti: str, until: float, now: float) -> bool: ...
    def entries(self) -> frozenset[tuple[str, str]]: ...
    def close(self) -> None: ...


def open_replay_cache(target: str | os.PathLike[str], *,
                      max_entries: int = 100_000) -> UsedTokens:
    """A :class:`ReplayCache` in the SQLite file ``target``, or the shared PostgreSQL one
    when ``target`` is a ``postgresql://`` URL."""
    text = os.fspath(target)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        from cds_service._pg_store import PostgresReplayCache

        return PostgresReplayCache(text, max_entries=max_entries)
    return ReplayCache(target, max_entries=max_entries)


class ReplayCache:
    """``(iss, jti)`` pairs already used, in the SQLite file ``path`` (``":memory:"``: a
    private in-process cache, for tests and single-process tools). Thread-safe."""

    def __init__(self, path: str | os.PathLike[str], *, max_entries: int = 100_000,
                 busy_timeout_seconds: float = 2.0) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self.path = os.fspath(path)
        self._max = max_entries
        self._check_size_every = max(1, max_entries // 100)
        self._since_size_check = 0
        self._last_purge = float("-inf")
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_seconds,
                                       isolation_level=None, check_same_thread=False)
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise ReplayStoreError(f"cannot open the replay cache {self.path}: {e}") from None

    def remember(self, iss: str, jti: str, until: float, now: float) -> bool:
        """Record this use; ``False`` if the pair was used before and has not expired."""
        with self._lock:
            try:
                if now - self._last_purge >= _PURGE_EVERY_SECONDS:
                    self._db.execute("DELETE FROM used_token WHERE expires < ?", (now,))
                    self._last_purge = now
                added = self._db.execute(_REMEMBER, (iss, jti, until, now)).rowcount == 1
                if added:
                    self._keep_bounded()
                return added
            except sqlite3.Error as e:
                raise ReplayStoreError(f"replay cache unavailable ({type(e).__name__})"
                                       ) from None

    def _keep_bounded(self) -> None:
        self._since_size_check += 1
        if self._since_size_check < self._check_size_every:
            return
        self._since_size_check = 0
        (count,) = self._db.execute("SELECT count(*) FROM used_token").fetchone()
        if count > self._max:
            self._db.execute(
                "DELETE FROM used_token WHERE (iss, jti) IN (SELECT iss, jti FROM used_token"
                " ORDER BY expires LIMIT ?)", (count - self._max,))

    def entries(self) -> frozenset[tuple[str, str]]:
        """Every ``(iss, jti)`` row now in the file, expired or not (tests, inspection)."""
        with self._lock:
            rows = self._db.execute("SELECT iss, jti FROM used_token").fetchall()
        return frozenset((str(i), str(j)) for i, j in rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
