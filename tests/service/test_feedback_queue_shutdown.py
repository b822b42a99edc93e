"""The feedback queue's shutdown when the database does not answer (an adversarial review
of the change that abandons a writer stuck in one call, each finding a test here; all fixed).

Real SQLite files throughout. A writer "stuck inside one database call" is made inside the
real ``SQLiteFeedbackStore.write_jobs`` (an sqlite3 progress handler that blocks the writer
thread in the middle of ``executemany``), that is while the store's own lock is held, as a
hung fsync on a frozen volume or a hard NFS mount would: ``close`` must still return, and
every write must end up in the database or the spill file (both only for the write of the
abandoned call, if it commits after all: documented).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cds_service import _feedback_store
from cds_service._feedback_store import QueuedFeedbackStore, open_store
from tests.service.test_feedback_queue import KB, NOW, card_uuids


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "feedback.db"
    open_store(f"sqlite:///{path}").close()
    return path


def block_writer_inside_sqlite(inner: Any, *, seconds: float | None
                               ) -> tuple[threading.Event, threading.Event]:
    """Make the feedback-writer thread block inside sqlite3 (under the store's ``_lock``)
    until ``answer`` is set (``seconds=None``) or for ``seconds`` (a slow, not hung, call)."""
    inside, answer = threading.Event(), threading.Event()

    def handler() -> int:
        if threading.current_thread().name == "feedback-writer" and not answer.is_set():
            inside.set()
            if seconds is None:
                answer.wait()
            else:
                time.sleep(seconds)
                answer.set()
        return 0

    inner._db.set_progress_handler(handler, 1)
    return inside, answer


def test_close_returns_when_the_real_sqlite_store_is_stuck_in_a_call(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``close`` returns although the stuck ``write_jobs`` holds the SQLite store's lock
    (it used to close the store after abandoning the writer, and wait for that lock)."""
    monkeypatch.setattr(_feedback_store, "STUCK_MARGIN", 0.3)
    inner = open_store(f"sqlite:///{db}")
    store = QueuedFeedbackStore(inner, spill_path=db.parent / "spill.jsonl",
                                drain_seconds=0.2)
    inside, answer = block_writer_inside_sqlite(inner, seconds=None)
    store.record_cards([("a1", ["R"], KB)], NOW)
    assert inside.wait(5)
    closer = threading.Thread(target=store.close, daemon=True)
    started = time.monotonic()
    closer.start()
    closer.join(4)
    hung = closer.is_alive()
    spilled = store.spill_path.read_text() if store.spill_path.exists() else ""
    answer.set()  # clean up
    closer.join(5)
    assert not hung, (f"close() still running {time.monotonic() - started:.1f} s later "
                      f"(abandon already spilled: {spilled.count('a1')} line(s) with a1)")


def test_a_put_racing_close_is_never_silently_lost(db: Path) -> None:
    """A write put just as ``close`` runs is written or spilled: ``_put`` checked ``_stop``
    and then queued, so a ``close`` in between left the job in a queue nobody drained (not
    written, not spilled, not counted as lost). Now the check and the queueing are one step
    under the lock ``close`` sets ``_stop`` under: here ``close`` waits for the put."""
    spill = db.parent / "spill.jsonl"
    store = QueuedFeedbackStore(open_store(f"sqlite:///{db}"), spill_path=spill)
    real_put = store._queue.put_nowait
    checked, go = threading.Event(), threading.Event()

    def put_nowait(job: Any) -> None:  # the caller is pre-empted right after the check
        checked.set()
        go.wait()
        real_put(job)

    store._queue.put_nowait = put_nowait  # type: ignore[method-assign]
    caller = threading.Thread(target=store.record_cards, args=([("late", ["R"], KB)], NOW))
    caller.start()
    assert checked.wait(5)
    closer = threading.Thread(target=store.close)
    closer.start()
    time.sleep(0.3)
    go.set()
    caller.join(5)
    closer.join(10)
    in_db = "late" in card_uuids(db)
    in_spill = spill.exists() and '"late"' in spill.read_text()
    assert in_db or in_spill, (store.queued(), store.lost)


class DiesOnce:
    """The real SQLite store whose first write raises something that is neither an
    sqlite3 error nor a StoreError (a driver bug, a KeyError from a spill line of another
    version in PostgresStore._WRITES[...], MemoryError...)."""

    def __init__(self, db: Path) -> None:
        self.store = open_store(f"sqlite:///{db}")
        self.failed = False

    def write_jobs(self, jobs: Any) -> None:
        if not self.failed:
            self.failed = True
            raise KeyError("kind")
        self.store.write_jobs(jobs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_close_after_the_writer_died_spills_the_queue(db: Path) -> None:
    """A writer that died of an unexpected error (here a KeyError, as a spill line of
    another version would raise) left its queue behind, dropped at ``close``; now
    ``close`` spills what is left in the queue."""
    spill = db.parent / "spill.jsonl"
    store = QueuedFeedbackStore(DiesOnce(db), spill_path=spill)  # type: ignore[arg-type]
    store.record_cards([("x1", ["R"], KB)], NOW)
    store._writer.join(5)
    assert not store._writer.is_alive()
    store.record_cards([("x2", ["R"], KB)], NOW)
    store.close()
    text = spill.read_text() if spill.exists() else ""
    assert '"x2"' in text or "x2" in card_uuids(db), (store.queued(), text)


class HungUntil:
    """The real store behind ``real``, whose write hangs until ``answer`` is set (the jobs
    of the hung call in ``inflight``)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.inside, self.answer = threading.Event(), threading.Event()
        self.inflight: list[str] = []

    def write_jobs(self, jobs: Any) -> None:
        if not self.answer.is_set():
            self.inflight[:] = [r[0] for j in jobs for r in j["rows"]]
            self.inside.set()
            self.answer.wait()
        self.real.write_jobs(jobs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_writer_stuck_in_one_call_is_abandoned_and_its_writes_spilled_once(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``close`` gives up on a writer inside a call that does not return (after
    ``drain_seconds`` + ``STUCK_MARGIN``), spills that call's writes and the queue, and
    returns, leaving the store open (the stuck call holds it). When the call returns after
    all and commits (the documented case of a write counted twice, never lost), the writer
    writes and spills nothing more: each write is in the spill file once."""
    monkeypatch.setattr(_feedback_store, "STUCK_MARGIN", 0.3)
    hung = HungUntil(open_store(f"sqlite:///{db}"))
    store = QueuedFeedbackStore(hung, spill_path=db.parent / "spill.jsonl",  # type: ignore[arg-type]
                                drain_seconds=0.2)
    store.record_cards([("a1", ["R"], KB)], NOW)
    assert hung.inside.wait(5)  # the writer is inside the call with a1
    store.record_cards([("b1", ["R"], KB)], NOW)  # queued behind it
    started = time.monotonic()
    store.close()
    assert time.monotonic() - started < 3
    spilled = store.spill_path.read_text() if store.spill_path else ""
    assert spilled.count('"a1"') == 1 and spilled.count('"b1"') == 1, spilled
    store.record_cards([("c1", ["R"], KB)], NOW)  # after close: to the spill file
    hung.answer.set()  # the stuck call returns
    store._writer.join(5)
    assert not store._writer.is_alive()
    assert card_uuids(db) == {"a1"}  # the stuck call's own write, nothing after it
    text = store.spill_path.read_text() if store.spill_path else ""
    assert [text.count(f'"{c}"') for c in ("a1", "b1", "c1")] == [1, 1, 1], text


def one_round(d: Path, i: int) -> None:
    """Thirty writes, the first one's call hanging; ``close`` while the rest arrive; the
    hung call released at a moment around the abandon that varies with ``i``."""
    path = d / "f.db"
    open_store(f"sqlite:///{path}").close()
    hung = HungUntil(open_store(f"sqlite:///{path}"))
    spill = d / "spill.jsonl"
    store = QueuedFeedbackStore(hung, spill_path=spill,  # type: ignore[arg-type]
                                drain_seconds=0.02)
    names = [f"c{i}-{k}" for k in range(30)]
    store.record_cards([(names[0], ["R"], KB)], NOW)
    assert hung.inside.wait(5)

    def producer() -> None:
        for n in names[1:]:
            store.record_cards([(n, ["R"], KB)], NOW)
            time.sleep(0.002)

    p = threading.Thread(target=producer)
    p.start()
    t = threading.Timer(0.07 + (i % 8) * 0.003, hung.answer.set)
    t.start()
    store.close()
    p.join()
    t.join()
    store._writer.join(5)
    with contextlib.closing(sqlite3.connect(path)) as c:
        in_db = [r[0] for r in c.execute("SELECT card_uuid FROM cards")]
    text = spill.read_text() if spill.exists() else ""
    for n in names:
        k = text.count(f'"{n}"') + in_db.count(n)
        assert k == 1 or (k == 2 and n in hung.inflight), (i, n, k)


def test_stress_abandon_never_loses_or_doubles(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The protocol under load: in 40 rounds, every write ends in the spill file exactly
    once, or in the database exactly once, or (only the hung call's) in both."""
    monkeypatch.setattr(_feedback_store, "STUCK_MARGIN", 0.05)
    for i in range(40):
        d = tmp_path / f"r{i}"
        d.mkdir()
        one_round(d, i)


class PausingLock:
    """``_state`` with a hook: when the writer thread leaves the critical section of
    ``_write``'s error path (the jobs just spilled), it is pre-empted there until close
    has abandoned it (a GIL switch at that point, made certain)."""

    def __init__(self, store: QueuedFeedbackStore) -> None:
        self.lock = threading.Lock()
        self.store = store
        self.error_spilled = threading.Event()

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
        if (threading.current_thread().name == "feedback-writer"
                and self.error_spilled.is_set() and self.store._writing):
            deadline = time.monotonic() + 5
            while not self.store._abandoned and time.monotonic() < deadline:
                time.sleep(0.01)


class FailsHard:
    """The real SQLite store whose write fails with an error that is not a lock (the
    ``_write`` error path: the jobs are spilled at once)."""

    def __init__(self, db: Path, hook: Any) -> None:
        self.store = open_store(f"sqlite:///{db}")
        self.hook = hook

    def write_jobs(self, jobs: Any) -> None:
        self.hook()
        raise _feedback_store.StoreError("constraint violated")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_write_failing_hard_just_before_the_abandon_is_spilled_once(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails for good (not a lock) as ``close`` gives up on the writer is
    spilled once: the writer used to spill it in one critical section and clear
    ``_writing`` in a second, so an abandon in between spilled it again."""
    monkeypatch.setattr(_feedback_store, "STUCK_MARGIN", 0.2)
    spill = db.parent / "spill.jsonl"
    holder: dict[str, PausingLock] = {}
    inner = FailsHard(db, lambda: holder["lock"].error_spilled.set())
    gate = threading.Event()
    real_take = QueuedFeedbackStore._take

    def take(self: QueuedFeedbackStore) -> Any:
        gate.wait(5)  # the writer starts taking once the lock is swapped in
        return real_take(self)

    monkeypatch.setattr(QueuedFeedbackStore, "_take", take)
    store = QueuedFeedbackStore(inner, spill_path=spill,  # type: ignore[arg-type]
                                drain_seconds=0.1)
    holder["lock"] = store._state = PausingLock(store)  # type: ignore[assignment]
    store.record_cards([("d1", ["R"], KB)], NOW)
    gate.set()
    assert holder["lock"].error_spilled.wait(5)
    store.close()
    store._writer.join(5)
    text = spill.read_text()
    assert text.count('"d1"') == 1, text


def test_a_put_does_not_wait_for_the_writers_spill(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A request's write only queues: it never waits for the writer's spill file (found by
    a second review: the put once took the lock the writer holds while it spills and
    fsyncs; here the write fails for good, by a trigger, and the writer's fsync takes 3 s)."""
    path = tmp_path / "feedback.db"
    open_store(f"sqlite:///{path}").close()
    with contextlib.closing(sqlite3.connect(path)) as c:
        c.execute("CREATE TRIGGER no_cards BEFORE INSERT ON cards "
                  "BEGIN SELECT RAISE(ABORT, 'refused'); END")
        c.commit()
    real_fsync = os.fsync
    in_fsync, release = threading.Event(), threading.Event()

    def fsync(fd: int) -> None:
        if threading.current_thread().name == "feedback-writer":
            in_fsync.set()
            release.wait(3.0)  # a slow spill volume
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = QueuedFeedbackStore(open_store(f"sqlite:///{path}"),
                                spill_path=tmp_path / "spill.jsonl")
    try:
        store.record_cards([("a1", ["R"], KB)], NOW)  # fails for good: the writer spills
        assert in_fsync.wait(5)
        started = time.monotonic()
        store.record_cards([("a2", ["R"], KB)], NOW)
        took = time.monotonic() - started
    finally:
        release.set()
        store.close()
    assert took < 0.5, f"a put waited {took:.2f} s for the writer's spill"
    assert (tmp_path / "spill.jsonl").read_text().count('"a2"') == 1  # refused too: spilled
