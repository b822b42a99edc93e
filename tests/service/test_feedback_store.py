"""CDS Hooks feedback (C16): stored durably on disk, all or nothing, read back per rule."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cds_service._feedback_store import (
    UNRECORDED_CARD,
    FeedbackStore,
    OverrideReasonCount,
    SQLiteFeedbackStore,
    open_store,
)

ROOT = Path(__file__).resolve().parents[2]
RECEIVED = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
KB = "movement-lbp 1.0.0"
NOT_RELEVANT = {"system": "https://example.org/override", "code": "not-relevant",
                "display": "Not relevant to this patient"}
PATIENT_DECLINED = {"system": "https://example.org/override", "code": "declined",
                    "display": "Patient declined"}


def accepted(card: str, suggestion: str | None = "s-1") -> dict[str, Any]:
    item: dict[str, Any] = {"card": card, "outcome": "accepted",
                            "outcomeTimestamp": "2026-11-02T08:59:00Z"}
    if suggestion:
        item["acceptedSuggestions"] = [{"id": suggestion}]
    return item


def overridden(card: str, reason: dict[str, str] | None = None,
               comment: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"card": card, "outcome": "overridden",
                            "outcomeTimestamp": "2026-11-02T10:59:00.123+02:00"}
    override: dict[str, Any] = {}
    if reason:
        override["reason"] = reason
    if comment:
        override["userComment"] = comment
    if override:
        item["overrideReason"] = override
    return item


def feedback_rows(path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT service_id, card_uuid, outcome, override_reason_code,"
                          " override_reason_display, override_user_comment,"
                          " accepted_suggestions, outcome_timestamp, received_at"
                          " FROM feedback ORDER BY id").fetchall()
    finally:
        db.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "feedback.db"


def test_feedback_survives_reopening(db_path: Path) -> None:
    store = SQLiteFeedbackStore(db_path)
    assert store.add("movement-lbp", [accepted("card-1"),
                                      overridden("card-2", NOT_RELEVANT, "seen by physio")],
                     RECEIVED) == 2
    store.close()
    assert feedback_rows(db_path) == [
        ("movement-lbp", "card-1", "accepted", None, None, None, '["s-1"]',
         "2026-11-02T08:59:00Z", "2026-11-02T09:00:00Z"),
        ("movement-lbp", "card-2", "overridden", "not-relevant",
         "Not relevant to this patient", "seen by physio", None,
         "2026-11-02T08:59:00.123000Z", "2026-11-02T09:00:00Z"),
    ]
    again = open_store(f"sqlite:///{db_path}")
    try:
        assert again.add("movement-lbp", [accepted("card-3", None)], RECEIVED) == 1
        assert [s.accepted for s in again.summary_by_rule()] == [2]
    finally:
        again.close()
    assert len(feedback_rows(db_path)) == 3


def test_database_uses_wal(db_path: Path) -> None:
    SQLiteFeedbackStore(db_path).close()
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"feedback", "cards"} <= tables
    finally:
        db.close()


BAD_ITEMS: dict[str, tuple[Any, str]] = {
    "not an object": ("card-x", "must be a JSON object"),
    "no card": ({"outcome": "accepted", "outcomeTimestamp": "2026-11-02T08:00:00Z"}, "card"),
    "card not a string": ({**accepted("c"), "card": 7}, "card"),
    "empty card": ({**accepted("c"), "card": " "}, "card"),
    "unknown outcome": ({**accepted("c", None), "outcome": "ignored"}, "outcome"),
    "no outcome": ({"card": "c", "outcomeTimestamp": "2026-11-02T08:00:00Z"}, "outcome"),
    "suggestions on an override": (
        {**overridden("c"), "acceptedSuggestions": [{"id": "s"}]}, "acceptedSuggestions"),
    "empty suggestions": ({**accepted("c"), "acceptedSuggestions": []}, "acceptedSuggestions"),
    "suggestion without id": (
        {**accepted("c"), "acceptedSuggestions": [{"uuid": "s"}]}, "acceptedSuggestions[0].id"),
    "suggestion not an object": (
        {**accepted("c"), "acceptedSuggestions": ["s"]}, "acceptedSuggestions[0]"),
    "override reason on an acceptance": (
        {**accepted("c"), "overrideReason": {"userComment": "x"}}, "overrideReason"),
    "override reason empty": ({**overridden("c"), "overrideReason": {}}, "overrideReason"),
    "override reason not an object": (
        {**overridden("c"), "overrideReason": "meh"}, "overrideReason"),
    "reason coding without code": (
        overridden("c", {"system": "s", "display": "d"}), "overrideReason.reason.code"),
    "reason coding not an object": (
        {**overridden("c"), "overrideReason": {"reason": "nope"}}, "overrideReason.reason"),
    "reason display not a string": (
        overridden("c", {"code": "x", "display": 3}), "reason.display"),  # type: ignore[dict-item]
    "comment not a string": (
        {**overridden("c"), "overrideReason": {"userComment": 5}}, "userComment"),
    "no timestamp": ({"card": "c", "outcome": "overridden"}, "outcomeTimestamp"),
    "date only": ({**accepted("c"), "outcomeTimestamp": "2026-11-02"}, "outcomeTimestamp"),
    "no time zone": (
        {**accepted("c"), "outcomeTimestamp": "2026-11-02T08:00:00"}, "outcomeTimestamp"),
    "impossible date": (
        {**accepted("c"), "outcomeTimestamp": "2026-02-30T08:00:00Z"}, "outcomeTimestamp"),
    "timestamp a number": ({**accepted("c"), "outcomeTimestamp": 1_800_000_000},
                           "outcomeTimestamp"),
}


@pytest.mark.parametrize("name", list(BAD_ITEMS))
def test_a_bad_item_rejects_the_whole_batch(name: str, db_path: Path) -> None:
    bad, expected = BAD_ITEMS[name]
    store = SQLiteFeedbackStore(db_path)
    try:
        store.add("movement-lbp", [accepted("before")], RECEIVED)
        with pytest.raises(ValueError) as info:
            store.add("movement-lbp", [accepted("ok-1"), overridden("ok-2"), bad], RECEIVED)
        message = str(info.value)
        assert "feedback[2]" in message and expected in message, message
    finally:
        store.close()
    assert [r[1] for r in feedback_rows(db_path)] == ["before"]


def test_feedback_must_be_a_list_and_times_aware(db_path: Path) -> None:
    with SQLiteFeedbackStore(db_path) as store:
        with pytest.raises(ValueError, match="array"):
            store.add("svc", {"card": "c"}, RECEIVED)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timezone"):
            store.add("svc", [accepted("c")], datetime(2026, 11, 2, 9, 0))
        assert store.add("svc", [], RECEIVED) == 0
    assert feedback_rows(db_path) == []


def test_received_at_in_another_zone_is_stored_in_utc(db_path: Path) -> None:
    with SQLiteFeedbackStore(db_path) as store:
        store.add("svc", [accepted("c")],
                  datetime(2026, 11, 2, 11, 0, tzinfo=timezone(timedelta(hours=2))))
    assert feedback_rows(db_path)[0][-1] == "2026-11-02T09:00:00Z"


def populate(store: FeedbackStore) -> None:
    store.record_cards([
        ("card-a", ["RF-CAUDA-EQUINA"], KB),
        ("card-b", ["PLAN-CORE", "PREC-ACUTE-FLARE"], KB),
        ("card-c", ["PLAN-CORE"], KB),
    ], RECEIVED)
    store.add("movement-lbp", [
        accepted("card-a", None),
        overridden("card-a", NOT_RELEVANT),
        overridden("card-b", NOT_RELEVANT),
        overridden("card-b", NOT_RELEVANT, "already referred"),
        overridden("card-b", PATIENT_DECLINED),
        overridden("card-c", comment="free text only"),
        accepted("card-c"),
        accepted("card-c", "s-2"),
        accepted("card-unknown"),
    ], RECEIVED)


def test_summary_by_rule_joins_feedback_to_recorded_cards(db_path: Path) -> None:
    with SQLiteFeedbackStore(db_path) as store:
        populate(store)
        # recording a card again keeps its first attribution
        store.record_cards([("card-a", ["SOMETHING-ELSE"], KB)])
    with SQLiteFeedbackStore(db_path, create=False) as store:
        summary = {s.rule_id: s for s in store.summary_by_rule()}
    assert list(summary) == sorted(summary)
    assert set(summary) == {"PLAN-CORE", "PREC-ACUTE-FLARE", "RF-CAUDA-EQUINA", UNRECORDED_CARD}
    not_relevant = ("https://example.org/override", "not-relevant",
                    "Not relevant to this patient")
    declined = ("https://example.org/override", "declined", "Patient declined")
    assert (summary["RF-CAUDA-EQUINA"].accepted, summary["RF-CAUDA-EQUINA"].overridden) == (1, 1)
    assert summary["RF-CAUDA-EQUINA"].override_reasons == [OverrideReasonCount(*not_relevant, 1)]
    core = summary["PLAN-CORE"]
    assert (core.accepted, core.overridden) == (2, 4)
    assert core.override_reasons == [
        OverrideReasonCount(*not_relevant, 2),
        OverrideReasonCount(*declined, 1),
        OverrideReasonCount(None, None, None, 1),
    ]
    flare = summary["PREC-ACUTE-FLARE"]
    assert (flare.accepted, flare.overridden) == (0, 3)
    assert (summary[UNRECORDED_CARD].accepted, summary[UNRECORDED_CARD].overridden) == (1, 0)
    assert core.to_json()["overrideReasons"][-1] == {"count": 1}


def test_record_cards_validates(db_path: Path) -> None:
    with SQLiteFeedbackStore(db_path) as store:
        with pytest.raises(ValueError, match="rule ids"):
            store.record_cards([("c", "RULE-1", KB)])
        with pytest.raises(ValueError, match="uuid"):
            store.record_cards([("", ["R"], KB)])


def test_concurrent_writers(db_path: Path) -> None:
    with SQLiteFeedbackStore(db_path) as store:
        errors: list[BaseException] = []

        def write(n: int) -> None:
            try:
                for i in range(20):
                    store.add("svc", [accepted(f"c-{n}-{i}")], RECEIVED)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors
    assert len(feedback_rows(db_path)) == 160


@pytest.mark.parametrize(("url", "message"), [
    ("postgresql+psycopg2://cds@127.0.0.1:1/feedback", "driver 'psycopg2' is not supported"),
    ("mysql://db/feedback", "unsupported database URL scheme 'mysql'"),
    ("feedback.db", "not a database URL"),
    ("sqlite://host/feedback.db", "no host"),
    ("sqlite:///", "plain file path"),
    ("sqlite:///x.db?mode=ro", "plain file path"),
])
def test_open_store_refuses_other_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        open_store(url)


@pytest.mark.parametrize("url", ["postgresql://cds:secret@127.0.0.1:1/feedback",
                                 "postgres://cds:secret@127.0.0.1:1/feedback",
                                 "postgresql+psycopg://cds:secret@127.0.0.1:1/feedback"])
def test_open_store_postgresql_unreachable_names_the_server_not_the_password(url: str) -> None:
    from cds_service._feedback_store import StoreUnavailable

    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1/feedback unreachable") as e:
        open_store(url)
    assert "secret" not in str(e.value)


def test_open_store_relative_and_absolute(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    open_store("sqlite:///relative.db").close()
    assert (tmp_path / "relative.db").is_file()
    absolute = tmp_path / "sub" / "abs.db"
    absolute.parent.mkdir()
    open_store(f"sqlite:///{absolute}").close()  # sqlite:////tmp/.../abs.db
    assert absolute.is_file()
    with pytest.raises(ValueError, match="no feedback database"):
        open_store(f"sqlite:///{tmp_path / 'missing.db'}", create=False)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(ValueError, match="cannot open"):
        open_store(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    mem = open_store("sqlite:///:memory:")
    populate(mem)
    assert len(mem.summary_by_rule()) == 4
    mem.close()


# -- the report command ---------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "movement_cds", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, check=False)


def test_report_command(db_path: Path) -> None:
    with SQLiteFeedbackStore(db_path) as store:
        populate(store)
    url = f"sqlite:///{db_path}"
    r = run_cli("feedback", "report", "--database", url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["rule", "accepted", "overridden"]
    core = next(line for line in lines if line.startswith("PLAN-CORE "))
    assert core.split()[1:3] == ["2", "4"]
    assert ("Not relevant to this patient [not-relevant] x2; "
            "Patient declined [declined] x1; (no coded reason) x1") in core
    assert any(line.startswith("RF-CAUDA-EQUINA ") for line in lines)

    r = run_cli("feedback", "report", "--database", url, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    rules = {x["rule"]: x for x in doc["rules"]}
    assert rules["PLAN-CORE"]["accepted"] == 2 and rules["PLAN-CORE"]["overridden"] == 4
    assert rules["PLAN-CORE"]["overrideReasons"][0] == {
        "system": "https://example.org/override", "code": "not-relevant",
        "display": "Not relevant to this patient", "count": 2}


def test_report_command_errors(tmp_path: Path) -> None:
    r = run_cli("feedback", "report", "--database", f"sqlite:///{tmp_path / 'none.db'}")
    assert r.returncode == 1
    assert "no feedback database" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "none.db").exists()
    r = run_cli("feedback", "report", "--database", "postgresql://127.0.0.1:1/x")
    assert r.returncode == 1 and "127.0.0.1:1/x unreachable" in r.stderr
    assert "Traceback" not in r.stderr
    SQLiteFeedbackStore(tmp_path / "empty.db").close()
    r = run_cli("feedback", "report", "--database", f"sqlite:///{tmp_path / 'empty.db'}")
    assert r.returncode == 0 and "no feedback recorded" in r.stdout
