"""Red-flag answers are safety data: how several answers to one red-flag question are read.

The rules for ordinary findings (stale = missing, latest wins) are data-quality rules; applied
to a red-flag question they would lose a reported "yes", the one thing a red-flag screen must
never do. ``read_red_flag`` implements the input contract's v2 rules for one ``rf-*`` item
(docs/integrators/red-flag-answers.md says the same for integrators):

- A "yes" never expires silently. The newest readable dated answer decides; when it is a
  "yes" older than the item's maximum answer age, it still counts (same pathway, same hold)
  and the plan says "reported YES on <date>, not re-assessed since". Only a newer readable
  "no" replaces a "yes": a "no" recorded at the same instant does not (the pair is named as
  a contradiction). A "yes" with a partial date (``2026-10``) is as recent as its date
  allows (the end of the month); dates are shown to the precision sent.
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

import calendar
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = ["Answer", "RedFlagReading", "read_red_flag", "show_date"]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class Answer:
    """One Observation answering one red-flag question.

    ``value`` is None when the answer was received but could not be read; ``when`` is None
    for an undated answer, else the start of its date; ``precision`` is that date's
    precision (1 year, 2 month, 3 day, 4 instant); ``order`` breaks ties between answers of
    the same instant so the result never depends on input order (greater = preferred).
    """

    value: bool | None
    when: datetime | None
    sources: tuple[str, ...]
    order: tuple[int, str, str] = (0, "", "")
    precision: int = 4
    label: str | None = None  # the date as the EHR sent it (its own time zone), for people

    @property
    def latest(self) -> datetime | None:
        """The latest instant the date allows (the end of a partial date's period)."""
        if self.when is None or self.precision >= 4:
            return self.when
        w = self.when
        if self.precision == 3:
            return w + timedelta(days=1, microseconds=-1)
        if self.precision == 2:
            days = calendar.monthrange(w.year, w.month)[1]
            return w + timedelta(days=days, microseconds=-1)
        return w.replace(year=w.year + 1) - timedelta(microseconds=1)

    @property
    def shown(self) -> str:
        return self.label if self.label is not None else show_date(self.when, self.precision)


@dataclass
class RedFlagReading:
    """What the answers to one item mean: the fact's value (None: unanswered), the answers
    it rests on, and the notes for the clinician."""

    value: bool | None = None
    used: tuple[Answer, ...] = ()
    # (kind, plain words, sources) for the clinician; see cds.AnswerNote
    notes: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    discordant: bool = False
    unreadable: bool = False

    @property
    def sources(self) -> tuple[str, ...]:
        return _sources(self.used)


def show_date(when: datetime | None, precision: int = 4) -> str:
    """A date a clinician reads without effort, to the precision it was sent: ``3 Oct 2026``,
    ``Oct 2026``, ``2026`` (``date unknown``)."""
    if when is None:
        return "date unknown"
    if precision <= 1:
        return f"{when.year}"
    if precision == 2:
        return f"{_MONTHS[when.month - 1]} {when.year}"
    return f"{when.day} {_MONTHS[when.month - 1]} {when.year}"


def _sources(*groups: Sequence[Answer]) -> tuple[str, ...]:
    return tuple(sorted({s for g in groups for a in g for s in a.sources}))


def _key(a: Answer) -> tuple[datetime, tuple[int, str, str]]:
    assert a.when is not None
    return a.when, a.order


def _said(a: Answer) -> str:
    word = "YES" if a.value else "NO"
    return f"{word} ({a.shown})" if a.when is None else f"{word} on {a.shown}"


def read_red_flag(
    question: str,
    answers: Sequence[Answer],
    as_of: datetime,
    max_age_days: float | None,
    discordance_days: float,
    lifelong: bool,
) -> RedFlagReading:
    """Read the answers to one red-flag item (``question`` is its plain words)."""
    if len(answers) == 1:  # the usual case, one answer: a current dated NO is simply used
        only = answers[0]
        if only.value is False and only.when is not None and (
                max_age_days is None
                or max(0.0, (as_of - only.when).total_seconds() / 86400) <= max_age_days):
            return RedFlagReading(value=False, used=(only,))
    return _read_all(question, answers, as_of, max_age_days, discordance_days, lifelong)


def _read_all(question: str, answers: Sequence[Answer], as_of: datetime,
              max_age_days: float | None, discordance_days: float,
              lifelong: bool) -> RedFlagReading:
    """``read_red_flag`` for any answers (the general reading)."""
    def age(a: Answer) -> float:
        # a YES is as recent as its date allows; a NO as old (the cautious reading of each)
        instant = a.latest if a.value else a.when
        assert instant is not None
        return max(0.0, (as_of - instant).total_seconds() / 86400)

    def current(a: Answer) -> bool:
        return max_age_days is None or age(a) <= max_age_days

    readable = sorted((a for a in answers if a.value is not None),
                      key=lambda a: (a.when is not None, a.when and _key(a), a.sources))
    dated = [a for a in readable if a.when is not None]
    undated_yes = [a for a in readable if a.when is None and a.value]
    undated_no = [a for a in readable if a.when is None and not a.value]
    latest = _newest(dated)
    out = RedFlagReading()
    yes_ever = [a for a in dated if a.value] + undated_yes
    if lifelong and yes_ever:
        _lifelong(out, question, dated, undated_yes, current)
    elif latest is not None and latest.value:
        _newest_is_yes(out, question, dated, latest, current)
    elif latest is not None and current(latest):
        _current_no(out, question, dated, undated_yes, latest, age, discordance_days)
    elif undated_yes:
        # no dated answer, or only a stale "no": the undated "yes" escalates
        out.value, out.used = True, tuple(undated_yes)
        stale = f" (a NO on {latest.shown} is too old to count)" if latest else ""
        out.notes.append(("undated-yes", f"{question}: answered YES, date unknown{stale}.",
                          _sources(undated_yes, [latest] if latest else [])))
    elif latest is not None:  # only a stale "no"
        _stale_no(out, question, dated, latest, age, discordance_days)
    elif undated_no:
        out.notes.append(("undated-no",
                          f"{question}: answered NO without a date, which counts as "
                          "unanswered.", _sources(undated_no)))
    _unreadable(out, question, answers, latest, current)
    return out


def _newest(dated: Sequence[Answer]) -> Answer | None:
    """The newest dated answer. A NO replaces a YES only when it is later than every instant
    the YES's date allows: of answers at the same time (a date-only YES and a NO timed that
    day, or two at one instant) the YES is the newest."""
    if not dated:
        return None
    top = max(dated, key=_key)
    if top.value:
        return top
    assert top.when is not None
    alongside = [a for a in dated if a.value and (a.latest or top.when) >= top.when]
    return max(alongside, key=_key) if alongside else top


def _lifelong(out: RedFlagReading, question: str, dated: list[Answer],
              undated_yes: list[Answer], current: Callable[[Answer], bool]) -> None:
    """A history cannot be undone: the newest "yes" stands whatever came after it."""
    dated_yes = [a for a in dated if a.value]
    first = dated_yes[-1] if dated_yes else undated_yes[0]
    out.value, out.used = True, tuple(dated_yes + undated_yes)
    later_no = [a for a in dated if not a.value
                and (first.when is None or (a.when is not None and a.when >= first.when))]
    if later_no:
        no = later_no[-1]
        out.discordant = True
        out.notes.append((
            "contradicted",
            f"{question}: answered {_said(first)}, then {_said(no)}. This is a history "
            "item, so the YES stands; confirm with the patient.",
            _sources(out.used, later_no)))
    elif first.when is None:
        out.notes.append(("undated-yes", f"{question}: answered YES, date unknown.",
                          _sources(undated_yes)))
    elif not current(first):
        out.notes.append(("stale-yes", f"{question}: reported YES on {first.shown}; a "
                          "history does not expire.", _sources([first])))


def _newest_is_yes(out: RedFlagReading, question: str, dated: list[Answer], latest: Answer,
                   current: Callable[[Answer], bool]) -> None:
    out.value, out.used = True, (latest,)
    assert latest.when is not None
    same_time_no = [a for a in dated if not a.value and a.when is not None
                    and a.when >= latest.when]
    if same_time_no:
        out.discordant = True
        out.notes.append((
            "discordant",
            f"{question}: answered both YES and NO on {latest.shown}. The YES is used; "
            "confirm with the patient.", _sources([latest], same_time_no)))
    if not current(latest):
        out.notes.append(("stale-yes", f"{question}: reported YES on {latest.shown}, not "
                          "re-assessed since.", _sources([latest])))


def _current_no(out: RedFlagReading, question: str, dated: list[Answer],
                undated_yes: list[Answer], latest: Answer, age: Callable[[Answer], float],
                discordance_days: float) -> None:
    out.value, out.used = False, (latest,)
    recent_yes = [a for a in dated if a.value and age(a) <= discordance_days]
    contradicted = recent_yes[-1:] + undated_yes
    if contradicted:
        out.discordant = True
        earlier = " and ".join(_said(a) for a in contradicted)
        out.notes.append((
            "discordant",
            f"{question}: answered {earlier}, then NO on {latest.shown}. The NO is used; "
            "confirm with the patient that the symptom has really gone.",
            _sources(contradicted, [latest])))


def _stale_no(out: RedFlagReading, question: str, dated: list[Answer], latest: Answer,
              age: Callable[[Answer], float], discordance_days: float) -> None:
    out.notes.append(("stale-no", f"{question}: last answered NO on {latest.shown}, too old "
                      "to count.", _sources([latest])))
    recent_yes = [a for a in dated if a.value and age(a) <= discordance_days]
    if recent_yes:
        out.discordant = True
        out.notes.append((
            "discordant",
            f"{question}: answered {_said(recent_yes[-1])}, then NO on {latest.shown}; "
            "neither is current. Ask again.", _sources(recent_yes[-1:], [latest])))


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
    live.sort(key=lambda a: (a.when is not None, a.when and _key(a), a.sources))
    dates = list(dict.fromkeys(a.shown for a in live))
    when = ", ".join(dates[-3:]) + (f" and {len(dates) - 3} earlier" if len(dates) > 3 else "")
    out.notes.append((
        "unreadable",
        f"{question}: an answer was received ({when}) but could not be read; ask again and "
        "record it as yes or no.", _sources(live)))
