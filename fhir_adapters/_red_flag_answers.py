"""Red-flag answers are safety data: how several answers to one red-flag question are read.

The rules for ordinary findings (stale = missing, latest wins) are data-quality rules; applied
to a red-flag question they would lose a reported "yes", the one thing a red-flag screen must
never do. ``read_red_flag`` implements the input contract's v2 rules for one ``rf-*`` item
(docs/integrators/red-flag-answers.md says the same for integrators):

- A "yes" never expires silently. The newest readable dated answer decides; when it is a
  "yes" older than the item's maximum answer age, it still counts (same pathway, same hold)
  and the plan says "reported YES on <date>, not re-assessed since". Only a newer readable
  "no" replaces a "yes".
- Lifelong items (any history of cancer, IV drug use, corticosteroid use) never expire and
  are never erased: a later "no" contradicts the "yes", which stands, and a caution names
  both answers and dates.
- A later "no" after a "yes" that is at most the discordance window old (other items): the
  "no" is used, and a caution names both answers and dates and asks the clinician to
  confirm.
- Undated answers: an undated "no" counts as unanswered (it cannot be shown to be current);
  an undated "yes" escalates, worded "date unknown". A current dated "no" is used over an
  undated "yes" (an answer whose date is known is not outweighed by one whose date is not),
  and the pair is a contradiction the caution names. A stale dated "no" does not outweigh
  an undated "yes".
- An answer that was received but cannot be read counts until a readable answer at least as
  new replaces it (an undated unreadable answer: until a current dated readable one). Items
  marked ``hold-when-unreadable`` (the cauda equina and motor items) then hold exercise.

The caller has already dropped answers recorded after the as-of instant plus the clock-skew
tolerance, and reads answers recorded within that tolerance as current.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["Answer", "RedFlagReading", "read_red_flag", "show_date"]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class Answer:
    """One Observation answering one red-flag question.

    ``value`` is None when the answer was received but could not be read; ``when`` is None
    for an undated answer; ``order`` breaks ties between answers of the same instant so the
    result never depends on input order (greater = preferred).
    """

    value: bool | None
    when: datetime | None
    sources: tuple[str, ...]
    order: tuple[int, str, str] = (0, "", "")


@dataclass
class RedFlagReading:
    """What the answers to one item mean: the fact's value (None: unanswered) and notes."""

    value: bool | None = None
    sources: tuple[str, ...] = ()
    # (kind, plain words, sources) for the clinician; see cds.AnswerNote
    notes: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    discordant: bool = False
    unreadable: bool = False


def show_date(when: datetime | None) -> str:
    """A date a clinician reads without effort: ``3 Oct 2026`` (``date unknown``)."""
    if when is None:
        return "date unknown"
    return f"{when.day} {_MONTHS[when.month - 1]} {when.year}"


def _key(a: Answer) -> tuple[datetime, tuple[int, str, str]]:
    assert a.when is not None
    return a.when, a.order


def _age_days(a: Answer, as_of: datetime) -> float:
    assert a.when is not None
    return max(0.0, (as_of - a.when).total_seconds() / 86400)


def read_red_flag(
    question: str,
    answers: Sequence[Answer],
    as_of: datetime,
    max_age_days: float | None,
    discordance_days: float,
    lifelong: bool,
) -> RedFlagReading:
    """Read the answers to one red-flag item (``question`` is its plain words)."""
    out = RedFlagReading()
    readable = [a for a in answers if a.value is not None]
    dated = sorted((a for a in readable if a.when is not None), key=_key)
    undated_yes = [a for a in readable if a.when is None and a.value]
    undated_no = [a for a in readable if a.when is None and not a.value]
    dated_yes = [a for a in dated if a.value]
    latest = dated[-1] if dated else None

    def current(a: Answer) -> bool:
        return max_age_days is None or _age_days(a, as_of) <= max_age_days

    def srcs(*group: Sequence[Answer]) -> tuple[str, ...]:
        return tuple(sorted({s for g in group for a in g for s in a.sources}))

    def said(a: Answer) -> str:
        word = "YES" if a.value else "NO"
        return f"{word} ({show_date(a.when)})" if a.when is None else (
            f"{word} on {show_date(a.when)}")

    yes_ever = dated_yes + undated_yes
    if lifelong and yes_ever:
        # a history cannot be undone: the newest "yes" stands whatever came after it
        first = dated_yes[-1] if dated_yes else undated_yes[0]
        out.value, out.sources = True, srcs(yes_ever)
        later_no = [a for a in dated if not a.value and (first.when is None
                                                         or _key(a) > _key(first))]
        if later_no:
            no = later_no[-1]
            out.discordant = True
            out.notes.append((
                "contradicted",
                f"{question}: answered {said(first)}, then {said(no)}. This is a history "
                "item, so the YES stands; confirm with the patient.",
                srcs(yes_ever, later_no)))
        elif first.when is None:
            out.notes.append(("undated-yes", f"{question}: answered YES, date unknown.",
                              srcs(undated_yes)))
        elif not current(first):
            out.notes.append((
                "stale-yes",
                f"{question}: reported YES on {show_date(first.when)}; a history does not "
                "expire.", srcs([first])))
    elif latest is not None and latest.value:
        out.value, out.sources = True, srcs([latest])
        if not current(latest):
            out.notes.append((
                "stale-yes",
                f"{question}: reported YES on {show_date(latest.when)}, not re-assessed since.",
                srcs([latest])))
    elif latest is not None and current(latest):  # a current "no"
        out.value, out.sources = False, srcs([latest])
        recent_yes = [a for a in dated_yes if _age_days(a, as_of) <= discordance_days]
        contradicted = recent_yes[-1:] + undated_yes[:1]
        if contradicted:
            out.discordant = True
            earlier = " and ".join(said(a) for a in contradicted)
            out.notes.append((
                "discordant",
                f"{question}: answered {earlier}, then NO on {show_date(latest.when)}. The "
                "NO is used; confirm with the patient that the symptom has really gone.",
                srcs(contradicted, [latest])))
    elif undated_yes:
        # no dated answer, or only a stale "no": the undated "yes" escalates
        out.value, out.sources = True, srcs(undated_yes)
        stale = f" (a NO on {show_date(latest.when)} is too old to count)" if latest else ""
        out.notes.append(("undated-yes",
                          f"{question}: answered YES, date unknown{stale}.",
                          srcs(undated_yes, [latest] if latest else [])))
    elif latest is not None:  # only a stale "no"
        recent_yes = [a for a in dated_yes if _age_days(a, as_of) <= discordance_days]
        out.notes.append(("stale-no",
                          f"{question}: last answered NO on {show_date(latest.when)}, too old "
                          "to count.", srcs([latest])))
        if recent_yes:
            out.discordant = True
            out.notes.append((
                "discordant",
                f"{question}: answered {said(recent_yes[-1])}, then NO on "
                f"{show_date(latest.when)}; neither is current. Ask again.",
                srcs(recent_yes[-1:], [latest])))
    elif undated_no:
        out.notes.append(("undated-no",
                          f"{question}: answered NO without a date, which counts as "
                          "unanswered.", srcs(undated_no)))

    _unreadable(out, question, answers, latest, current)
    return out


def _unreadable(out: RedFlagReading, question: str, answers: Sequence[Answer],
                latest: Answer | None, current: Callable[[Answer], bool]) -> None:
    """Mark answers that were received but cannot be read and that no readable answer at
    least as new replaces (an undated one: only a current dated readable answer does)."""
    live: list[Answer] = []
    for a in answers:
        if a.value is not None:
            continue
        if a.when is None:
            replaced = latest is not None and current(latest)
        else:
            replaced = latest is not None and latest.when is not None and latest.when >= a.when
        if not replaced:
            live.append(a)
    if not live:
        return
    out.unreadable = True
    when = ", ".join(dict.fromkeys(show_date(a.when) for a in live))
    out.notes.append((
        "unreadable",
        f"{question}: an answer was received ({when}) but could not be read; ask again and "
        "record it as yes or no.",
        tuple(sorted({s for a in live for s in a.sources}))))
