"""Patient handout pages the plan card links to: ``GET {base_url}/handouts/{id}``.

When the service answers a call, it renders the patient handout of the plan
(``movement_cds.handout_html``) and keeps the page here under a new random id; the plan
card's ``links`` gets ``{base_url}/handouts/{id}`` (type ``absolute``). The URL carries no
patient data: the id is 32 random bytes (``secrets.token_urlsafe``, 43 characters), not
derived from the patient, the plan or the time.

The link is a capability: whoever has it can read the page until it expires (the EHR shows
it to the clinician, who may print it or pass it on; the page has no name or record id). So:
pages expire ``ttl_seconds`` after they were made (``[handouts] ttl_seconds``), an unknown,
malformed or expired id gets the same 404 with no detail, nothing lists the pages, and the
answer says ``Cache-Control: no-store`` and ``Referrer-Policy: no-referrer``. The access log
(``movement-cds serve``) writes the route as ``/handouts/<id>``, never the id itself
(``RedactHandoutIds``): whoever reads the logs must not be able to open the pages.

The pages live in one SQLite file (``[handouts] database``) shared by the worker processes,
since the call and the page's GET may reach different workers. Expired pages are deleted
when a new page is stored.
"""

from __future__ import annotations

import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["HANDOUT_ID", "HandoutStore", "RedactHandoutIds"]

#: What a handout id looks like (``secrets.token_urlsafe(32)``); anything else is a 404.
HANDOUT_ID: Final = re.compile(r"[A-Za-z0-9_-]{43}")

_IN_PATH: Final = re.compile(r"(/handouts/)[^?#\s]*")


class RedactHandoutIds(logging.Filter):
    """A log filter (uvicorn's access log): ``/handouts/{id}`` in a record's arguments
    becomes ``/handouts/<id>``; the record is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "/handouts/" in a
                                           for a in args):
            record.args = tuple(_IN_PATH.sub(r"\1<id>", a) if isinstance(a, str) else a
                                for a in args)
        elif isinstance(record.msg, str) and "/handouts/" in record.msg:
            record.msg = _IN_PATH.sub(r"\1<id>", record.msg)
        return True


_SCHEMA: Final = ("CREATE TABLE IF NOT EXISTS handout (id TEXT PRIMARY KEY, html TEXT NOT "
                  "NULL, expires REAL NOT NULL)")


class HandoutStore:
    """Handout pages by random id, kept ``ttl_seconds``; ``path`` None: in memory (one
    process only, for tests)."""

    def __init__(self, path: Path | None, ttl_seconds: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl_seconds
        self._clock = clock
        self._target = str(path) if path is not None else "file:handouts?mode=memory&cache=shared"
        self._uri = path is None
        self._keep: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            if path is not None:
                db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            db.execute("CREATE INDEX IF NOT EXISTS handout_expires ON handout (expires)")
        if path is None:  # a shared in-memory database lives while one connection is open
            self._keep = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._target, timeout=10, uri=self._uri,
                             check_same_thread=False, isolation_level=None)
        # a page is made again by the next call: no fsync per page (WAL keeps it consistent)
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def put(self, html: str) -> str:
        """Keep a page; its new id."""
        handout_id = secrets.token_urlsafe(32)
        now = self._clock()
        db = self._connect()
        try:
            db.execute("DELETE FROM handout WHERE expires <= ?", (now,))
            db.execute("INSERT INTO handout (id, html, expires) VALUES (?, ?, ?)",
                       (handout_id, html, now + self.ttl))
        finally:
            db.close()
        return handout_id

    def delete(self, handout_ids: list[str]) -> None:
        """Remove pages (advice that was refused after its page was made)."""
        db = self._connect()
        try:
            db.executemany("DELETE FROM handout WHERE id = ?", [(i,) for i in handout_ids])
        finally:
            db.close()

    def get(self, handout_id: str) -> str | None:
        """The page, or None when the id is unknown, malformed or expired."""
        if not HANDOUT_ID.fullmatch(handout_id):
            return None
        db = self._connect()
        try:
            row = db.execute("SELECT html FROM handout WHERE id = ? AND expires > ?",
                             (handout_id, self._clock())).fetchone()
        finally:
            db.close()
        return str(row[0]) if row else None

    def close(self) -> None:
        if self._keep is not None:
            self._keep.close()
            self._keep = None
