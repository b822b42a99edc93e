"""Inbound mapping: a FHIR R4 Bundle in, ``cds.PatientFacts`` out.

``read_bundle`` implements the input contract (docs/integrators/red-flag-answers.md has the
rules for red-flag answers, ODI fractions, STarT Back consistency and contained resources). It
either
returns the facts (with every ignored, preliminary, superseded or unusable item listed in
``PatientFacts.issues``) or raises ``InvalidBundleError``, whose OperationOutcome says why the
input cannot be evaluated at all. It never raises anything else for any input: an unexpected
failure while reading the input becomes an ``InvalidBundleError`` with one issue of code
``exception``.

Input
    A ``dict`` (already parsed JSON), or JSON text as ``str`` or ``bytes``. The Bundle must be
    of type ``collection``, ``searchset``, ``transaction`` or ``batch``. JSON text is parsed
    strictly (``fhir_adapters._json_text.parse_json``): ``NaN``/``Infinity`` (not JSON),
    invalid UTF-8, a lone surrogate (``"\\ud800"``) and a key twice in one object make the
    input invalid, naming where (``Bundle.entry[3].resource.subject``); a ``dict`` given
    directly is checked for lone surrogates.

R4 validation
    The mapper checks every element it reads, by its JSON type, against the input contract
    and the fact catalog (status codes, subjects, value types and ranges, units, codes), and
    uses nothing malformed. With ``strict_fhir=True`` each Patient, Observation, Condition
    and CarePlan is also validated on its own with its ``fhir.resources.R4B`` model, and the
    Bundle envelope (without the entry resources) with the R4B Bundle model, so that parts
    the rules never read are checked too: an invalid Patient or envelope makes the input
    invalid; an invalid Observation, Condition or CarePlan is reported (warning,
    ``structure``) and ignored. It is off by default because it costs about 0.1-0.2 ms per
    resource (a 30-Observation Bundle: ~4 ms with it, ~0.5 ms without; the whole evaluation
    is ~4 ms), and the R4B models are laxer than the mapper on what it reads
    (``valueInteger: "7"`` passes them).

Locations
    A non-fatal issue's ``location`` is the resource's reference as given (``Observation/{id}``
    when the resource has an id, else the entry's ``fullUrl``), and ``Bundle.entry[i]`` only
    for a resource with neither. References do not change when entries are reordered, so the
    same data in any order gives an equal ``PatientFacts`` (as long as every resource has an
    id or a fullUrl). Issues of an ``InvalidBundleError`` name the entry as
    ``Bundle.entry[i]`` (a FHIRPath expression for OperationOutcome.issue.expression) and
    their message gives the resource's reference. Messages never echo clinical values: an
    invalid value is described by its type or its allowed range.

One patient
    Exactly one Patient. Every Observation, QuestionnaireResponse, Condition and CarePlan
    (the contract's "a resource about any other subject") must have ``subject.reference`` equal to
    ``Patient/{id}``, the Patient entry's ``fullUrl``, or an absolute ``{base}/Patient/{id}``
    (a ``/_history/{version}`` suffix is accepted on all forms). When the Patient's fullUrl is
    itself a RESTful URL, an absolute reference must use that same base. A missing subject,
    a logical (identifier-only) reference or any other reference makes the input invalid.
    The Patient needs an id or a fullUrl (otherwise nothing can refer to it).

Observations
    - ``status``: final, amended, corrected used; preliminary used, reported, and the fact is
      marked ``preliminary``; registered, cancelled, entered-in-error, unknown (or any other
      status) ignored and reported.
    - Answers recorded up to ``clock-skew-tolerance-minutes`` (a parameter, default 10)
      after the as-of instant count as current; later ones are reported and ignored.
    - Red-flag answers (facts marked ``red-flag`` in the catalog) are safety data and do not
      follow latest-wins or stale-means-missing: see "Red-flag answers" below.
    - Latest wins per code: the date is ``effectiveDateTime`` (or ``effectiveInstant``), else
      ``effectivePeriod.end``, else ``issued``. Partial dates and date-only values count from
      the start of their period in UTC; when two start at the same instant the more precise
      wins. Undated lose to dated. Remaining ties go to the greatest reference, then the
      greatest canonical JSON, so input order never matters. Each loser is reported.
    - The winner is the clinician's current answer: when its value is unusable (wrong type,
      out of range, wrong unit, no value) the fact counts as missing; an older Observation
      is never used in its place (missing data must not read as an older "normal").
    - Integer facts: ``valueInteger``, or ``valueQuantity`` with an integral value. Decimal
      facts: ``valueQuantity`` or ``valueInteger``. Units are UCUM (``Quantity.code``, or
      ``Quantity.unit`` when there is no code). Score-like facts (catalog unit ``{score}``,
      ``%`` or none) accept no unit, ``1`` or ``{score}`` besides their own. Facts with a
      physical unit need it: ``deg`` for ``slr-angle``; ``episode-duration`` takes ``d`` and
      also converts ``h``, ``wk``, ``mo`` (30.4375 d) and ``a`` (365.25 d) to days. A
      ``Quantity.comparator`` (``<5 d``) is not an exact value and is not used.
    - Code facts: ``valueCodeableConcept`` with a coding in the screen CodeSystem whose code
      the catalog allows. Boolean facts: ``valueBoolean``.
    - Bilateral tests: components coded SNOMED 7771000 (left) / 24028007 (right) give
      ``NAME.left`` / ``NAME.right``; a top-level value gives ``NAME``; a component coded
      ``screen#lbp-provoked`` (FMS and loaded-pattern tests) gives ``NAME.lbp-provoked``.
      Lower side and asymmetry are computed by the core, not here. A side component without
      a value leaves that side missing (warning); any invalid value makes the whole
      Observation unusable.
    - Pregnancy status (LOINC 82810-3): answer LA15173-0 (pregnant) gives
      ``condition-pregnancy = true``, LA26683-5 (not pregnant) gives no fact, other answers
      give no fact and are reported.
    - Codes not in the catalog are reported (``not-supported``) and ignored.

Red-flag answers (fhir_adapters/_red_flag_answers.py; docs/integrators/red-flag-answers.md)
    Read as ``valueBoolean``, or a SNOMED 373066001/373067005 or LOINC LA33-6/LA32-8 Yes/No
    code; anything else is received but unreadable (reported). A YES never expires silently
    (an old one counts, worded "reported YES on <date>, not re-assessed since"); lifelong
    items are never erased; a NO after a recent YES raises ``red-flag-discordant``; an
    undated NO is unanswered and an undated YES escalates; an unreadable answer not replaced
    by a newer readable one sets ``red-flag-unreadable`` (and ``red-flag-unreadable-holding``
    for ``hold-when-unreadable`` items). The notes on how each was read go to
    ``PatientFacts.answer_notes``.

QuestionnaireResponses (fhir_adapters/_questionnaire_response.py)
    Each answered item (linkId = a fact's name, or ending in a catalog code; at any depth)
    becomes an Observation-shaped answer dated ``authored`` and is read above, with the
    Observations: one code path. ``completed``/``amended`` are used, ``in-progress`` and
    ``stopped`` read as preliminary (reported once), ``entered-in-error`` and any other
    status ignored and reported; unknown items are reported; several different answers to
    one item cannot be read. Issues about an item name it (``item 'rf-fever': ...``), and
    the facts' sources are the QuestionnaireResponse's reference.

Patient
    ``birthDate`` gives ``age`` in whole years at the as-of date (the as-of instant's date in
    its own UTC offset). A partial birthDate (``1970``, ``1970-05``) gives the age that is
    certain: the minimum possible, computed from the last possible birth day; this is
    reported. ``age-oldest-possible`` is the oldest possible age (from the first possible
    birth day; equal to ``age`` for a full date): the red-flag rules' age thresholds use it,
    and an answer note says so when the two differ. ``gender`` gives ``sex`` (``unknown``
    is a value too). Missing ones give no fact.

Conditions
    Active when ``clinicalStatus`` is active, recurrence or relapse. Inactive, remission and
    resolved are not active. With no ``clinicalStatus`` a Condition counts as active unless
    it has an ``abatement[x]`` (FHIR con-4); an unrecognised ``clinicalStatus`` also counts
    as active (precautions err towards present) and is reported. A fact marked ``history``
    in the catalog (``condition-cancer``) counts whatever its clinicalStatus (a cancer in
    remission is a history of cancer). A fact's ``also-coded`` codes carry it too
    (``condition-diabetes``). ``verificationStatus``
    refuted or entered-in-error removes it; unconfirmed, provisional and differential count
    and are reported.

Follow-up (``PatientFacts.follow_up``; see docs/integrators/follow-up.md)
    - The previous plan is a CarePlan made by this project: one ``instantiatesUri`` under
      ``http://movement-cds.org/fhir/KnowledgeBase/``. Any other CarePlan is reported
      (warning, ``not-supported``) and ignored, never an error for the whole request; its
      subject must still be the Bundle's Patient (another patient's CarePlan is fatal, as
      for Observations). A CarePlan with status ``entered-in-error`` or ``created`` after the
      as-of instant, or with neither an id nor a fullUrl (``replaces`` could not name it),
      is ignored and reported. Of several, the latest ``created`` (undated
      lose; ties to the greatest reference, then canonical JSON) is the previous plan; the
      others are reported as ignored.
    - Each ``activity.detail`` coded in the exercise CodeSystem is one previous exercise:
      ``doNotPerform`` true -> avoided; ``status`` not-started, scheduled, in-progress ->
      ``proposed``; on-hold -> ``on-hold``; stopped, cancelled, completed -> ``stopped``;
      anything else is reported and skipped. The dose is read back from
      ``scheduledTiming.repeat`` and the ``exercise-dose`` extension exactly as
      ``write_bundle`` writes them (an unreadable dose is reported and read as ``None``);
      ``since`` and ``consecutive_bad`` from the ``exercise-follow-up`` extension (absent:
      ``None`` and 0). Other activities (referrals, the check-in) are not exercises.
    - Response Observations are coded ``screen#exercise-pain-during``,
      ``-pain-next-morning``, ``-sessions-done``, ``-sessions-prescribed``,
      ``-perceived-effect``, ``-peripheralization``, with one component coded
      ``screen#exercise`` whose valueCodeableConcept names the exercise (exercise
      CodeSystem). Statuses, dates after the as-of instant and latest-wins work as for any
      Observation, per exercise and code; an unusable winning value is reported and that
      answer counts as missing (never an older one instead). A response without the
      exercise component, about an exercise the previous plan does not list (or lists as
      avoided), or sent without any previous CarePlan is reported and ignored.
    - The result is ``FollowUp(previous, responses)`` (responses sorted by exercise, sources
      sorted), or ``None`` without a usable previous CarePlan.

Issue codes
    ``InvalidBundleError`` (severity error): ``invalid`` not JSON; ``structure`` not a Bundle
    or not valid R4; ``not-supported`` Bundle.type; ``required`` no Patient, or a Patient
    nothing can refer to; ``business-rule`` several Patients, or a resource about another
    subject; ``exception`` an unexpected failure. In ``PatientFacts.issues``:
    information/``informational`` (status, preliminary, superseded, inactive or tentative
    Condition, follow-up), information/``not-supported`` (unknown code, resource type or
    component), warning/``value`` (unusable value, unit or status), warning/``required`` (no
    value), warning/``structure`` (resource not valid R4), warning/``not-supported`` (a
    CarePlan not made by this project), warning/``business-rule`` (a follow-up response
    that cannot be tied to an exercise of the previous plan).

``as_of`` defaults to now (UTC). A naive datetime is taken to be UTC.
"""

from __future__ import annotations

import calendar
import dataclasses
import functools
import json
import math
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final, Literal, NoReturn, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from pydantic import BaseModel, ValidationError

from cds import (
    PROGRESS_FACTS,
    AnswerNote,
    ExerciseDose,
    ExerciseResponse,
    Fact,
    FollowUp,
    InputIssue,
    KnowledgeBase,
    Measure,
    PatientFacts,
    PreviousExercise,
    PreviousPlan,
    ProgressPoint,
    Rating,
    adherence_points,
)
from cds import ProgressRole as Role
from cds.authoring import Param
from fhir_adapters._errors import InvalidBundleError
from fhir_adapters._json_text import (
    JSONTextError,
    parse_json,
    surrogate_error,
    unusable_text_path,
)
from fhir_adapters._questionnaire_response import QR_STATUS, Question, item_answers
from fhir_adapters._red_flag_answers import Answer, read_red_flag, show_date
from fhir_adapters._terminology import (
    CLINICAL_STATUS,
    EXERCISE_SYSTEM,
    EXT_EXERCISE_DOSE,
    EXT_FOLLOW_UP_STATE,
    KNOWLEDGE_BASE_BASE,
    LOINC,
    SNOMED,
    TIMEZONE_EXTENSIONS,
    UCUM,
    VERIFICATION_STATUS,
)
from fhir_adapters._terminology import SCREEN_SYSTEM as SCREEN

__all__ = ["FOLLOW_UP_CODES", "InputMap", "own_careplan", "read_patient_facts"]

LEFT: Final = (SNOMED, "7771000")
RIGHT: Final = (SNOMED, "24028007")
LBP_PROVOKED: Final = (SCREEN, "lbp-provoked")
PREGNANCY_STATUS: Final = (LOINC, "82810-3")
PREGNANT: Final = (LOINC, "LA15173-0")
NOT_PREGNANT: Final = (LOINC, "LA26683-5")
PREGNANCY_CONDITION: Final = (SNOMED, "77386006")
FOLLOW_UP_PREFIX: Final = "exercise-"
EXERCISE_COMPONENT: Final = (SCREEN, "exercise")
OWN_CAREPLAN_PREFIX: Final = KNOWLEDGE_BASE_BASE + "/"

# red-flag answers sent as codes (input contract v2): SNOMED Yes/No, LOINC answer list
YES_NO: Final[Mapping[Coded, bool]] = {
    (SNOMED, "373066001"): True, (SNOMED, "373067005"): False,
    (LOINC, "LA33-6"): True, (LOINC, "LA32-8"): False,
}
_NO_ANSWER: Final = "no answer"
_QUESTION_NOTE: Final = re.compile(r"\s*\(red-flag screen[^)]*\)\s*$")
_EARLIEST_ZONE: Final = timedelta(hours=14)  # UTC+14: where a calendar date begins first

BUNDLE_TYPES: Final = frozenset({"collection", "searchset", "transaction", "batch"})
USED_STATUS: Final = frozenset({"final", "amended", "corrected", "preliminary"})
IGNORED_STATUS: Final = frozenset({"registered", "cancelled", "entered-in-error", "unknown"})
ACTIVE_CLINICAL: Final = frozenset({"active", "recurrence", "relapse"})
INACTIVE_CLINICAL: Final = frozenset({"inactive", "remission", "resolved"})
REMOVED_VERIFICATION: Final = frozenset({"refuted", "entered-in-error"})
TENTATIVE_VERIFICATION: Final = frozenset({"unconfirmed", "provisional", "differential"})

# units a score-like fact accepts besides its own; conversions to days for durations
DIMENSIONLESS: Final = frozenset({"1", "{score}"})
SCORE_UNITS: Final = frozenset({"{score}", "%"})
TO_DAYS: Final[Mapping[str, float]] = {"d": 1.0, "h": 1 / 24, "wk": 7.0, "mo": 30.4375,
                                       "a": 365.25}

MODELS: Final[Mapping[str, type[BaseModel]]] = {
    "Patient": Patient,
    "Observation": Observation,
    "Condition": Condition,
    "CarePlan": CarePlan,
    "QuestionnaireResponse": QuestionnaireResponse,
}
SUBJECT_TYPES: Final = frozenset({"Observation", "Condition", "CarePlan",
                                  "QuestionnaireResponse"})

_DATE_TIME = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2}))?)?)?"
)
_BIRTH_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_UNDATED: Final = datetime.min.replace(tzinfo=UTC)

Kind = Literal["boolean", "integer", "decimal", "code", "pregnancy"]
Scalar = bool | int | float | str
Coded = tuple[str, str]


# --- the catalog, indexed by input code ----------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """What the catalog says about one input fact, in the shape the mapper needs."""

    name: str
    kind: Kind
    minimum: float | None = None
    maximum: float | None = None
    codes: frozenset[str] = frozenset()
    unit: str | None = None
    bilateral: bool = False
    provoked: bool = False  # accepts a screen#lbp-provoked component
    max_age_days: float | None = None  # older answers are stale: they count as missing
    # red-flag answers are safety data (docs/integrators/red-flag-answers.md)
    red_flag: bool = False
    lifelong: bool = False
    hold_when_unreadable: bool = False
    question: str = ""  # the item in plain words, for the clinician


RATINGS: Final = frozenset({"better", "same", "worse"})
# the follow-up response codes (input contract, "Follow-up"): code -> how its value is read;
# the spec's name is the ExerciseResponse field it fills
FOLLOW_UP_SPECS: Final[Mapping[str, _Spec]] = {
    "exercise-pain-during": _Spec("pain_during", "integer", 0, 10),
    "exercise-pain-next-morning": _Spec("next_morning", "code", codes=RATINGS),
    "exercise-sessions-done": _Spec("sessions_done", "integer", 0, 1000),
    "exercise-sessions-prescribed": _Spec("sessions_prescribed", "integer", 0, 1000),
    "exercise-perceived-effect": _Spec("perceived_effect", "code", codes=RATINGS),
    "exercise-peripheralization": _Spec("peripheralization", "boolean"),
}
FOLLOW_UP_CODES: Final = tuple((SCREEN, c) for c in sorted(FOLLOW_UP_SPECS))
_FOLLOW_UP_KEYS: Final = frozenset(FOLLOW_UP_CODES)
# previous CarePlan activity status -> PreviousExercise.status
PREVIOUS_STATUS: Final[Mapping[str, str]] = {
    "not-started": "proposed", "scheduled": "proposed", "in-progress": "proposed",
    "on-hold": "on-hold",
    "stopped": "stopped", "cancelled": "stopped", "completed": "stopped",
}


@dataclass(frozen=True)
class InputMap:
    """The fact catalog indexed by the codes that carry each fact (built once per KB)."""

    observations: Mapping[Coded, _Spec]
    conditions: Mapping[Coded, str]
    age: _Spec | None
    sex: _Spec | None
    # every fact name of the catalog (the reader sets some facts that no code carries)
    names: frozenset[str] = frozenset()
    # Condition facts that count whatever their clinicalStatus (a history, e.g. cancer)
    history: frozenset[str] = frozenset()
    clock_skew: timedelta = timedelta(0)
    discordance_days: int | float = 30.0
    # QuestionnaireResponse items: by linkId = the fact's name, or by a code of one fact
    link_ids: Mapping[str, Question] = dataclasses.field(default_factory=dict)
    question_codes: Mapping[str, Question] = dataclasses.field(default_factory=dict)

    @staticmethod
    def from_knowledge_base(kb: KnowledgeBase) -> InputMap:
        observations: dict[Coded, _Spec] = {}
        conditions: dict[Coded, str] = {}
        age: _Spec | None = None
        sex: _Spec | None = None
        by_code: dict[str, set[Question]] = {}
        link_ids: dict[str, Question] = {}
        for name, d in kb.facts.items():
            if d.derived:
                continue
            spec = _Spec(
                name=name,
                kind=d.type,
                minimum=d.min,
                maximum=d.max,
                codes=frozenset(d.codes or ()),
                unit=d.unit,
                bilateral=d.bilateral,
                provoked=name.startswith(("fms-", "pattern-")),
                max_age_days=_max_age(kb, d.max_age_days),
                red_flag=d.red_flag is not None,
                lifelong=d.lifelong,
                hold_when_unreadable=d.hold_when_unreadable,
                question=_QUESTION_NOTE.sub("", " ".join(d.description.split())),
            )
            if name == "age":
                age = spec
            elif name == "sex":
                sex = spec
            if d.coding is None:
                continue
            question = Question((d.coding.system, d.coding.code), d.unit)
            if not name.startswith("condition-"):
                link_ids[name] = question
            for coding in (d.coding, *d.also_coded):
                key = (coding.system, coding.code)
                if not name.startswith("condition-"):
                    by_code.setdefault(coding.code, set()).add(question)
                if name.startswith("condition-"):
                    conditions[key] = name
                    if key == PREGNANCY_CONDITION:
                        observations[PREGNANCY_STATUS] = _Spec(name=name, kind="pregnancy")
                else:
                    observations[key] = spec
        return InputMap(
            observations, conditions, age, sex,
            names=frozenset(kb.facts),
            history=frozenset(n for n, d in kb.facts.items() if d.history),
            clock_skew=timedelta(minutes=_parameter(kb, "clock-skew-tolerance-minutes", 0)),
            discordance_days=_parameter(kb, "red-flag-discordance-window-days", 30),
            link_ids=link_ids,
            question_codes={c: next(iter(q)) for c, q in by_code.items() if len(q) == 1},
        )


def _parameter(kb: KnowledgeBase, name: str, default: int | float) -> int | float:
    """A numeric parameter of the knowledge base, or ``default`` when it has none."""
    return float(kb.parameter(name)) if name in kb.parameters else default


def _max_age(kb: KnowledgeBase, raw: float | Param | None) -> float | None:
    if raw is None:
        return None
    return float(kb.parameter(raw.param)) if isinstance(raw, Param) else float(raw)


_MAPS: dict[int, tuple[weakref.ref[KnowledgeBase], object, InputMap]] = {}


def _input_map(kb: KnowledgeBase) -> InputMap:
    """The cached InputMap of ``kb`` (rebuilt if ``kb.facts`` was replaced)."""
    hit = _MAPS.get(id(kb))
    if hit is not None and hit[0]() is kb and hit[1] is kb.facts:
        return hit[2]
    imap = InputMap.from_knowledge_base(kb)
    key = id(kb)
    _MAPS[key] = (weakref.ref(kb, lambda _r: _MAPS.pop(key, None)), kb.facts, imap)
    return imap


# --- small, defensive readers of raw JSON ---------------------------------------------------


def _dict(x: object) -> dict[str, Any] | None:
    return x if isinstance(x, dict) else None


def _list(x: object) -> list[Any]:
    return x if isinstance(x, list) else []


def _str(x: object) -> str | None:
    return x if isinstance(x, str) and x else None


def _number(x: object) -> int | float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _codings(concept: object) -> list[Coded]:
    """(system, code) of every well-formed coding of a CodeableConcept."""
    if not isinstance(concept, dict):
        return []
    codings = concept.get("coding")
    if not isinstance(codings, list):
        return []
    out: list[Coded] = []
    for cd in codings:  # _dict / _str inlined: this runs for every coded element read
        if isinstance(cd, dict):
            system, code = cd.get("system"), cd.get("code")
            if isinstance(system, str) and system and isinstance(code, str) and code:
                out.append((system, code))
    return out


def _status_code(concept: object, system: str) -> str | None:
    """The single code of ``system`` (or with no system) in a status CodeableConcept;
    ``"?"`` when present but unreadable or contradictory."""
    c = _dict(concept)
    if c is None:
        return None
    codes: set[str] = set()
    for coding in _list(c.get("coding")):
        cd = _dict(coding)
        if cd is None:
            continue
        code = _str(cd.get("code"))
        if code is not None and cd.get("system", system) == system:
            codes.add(code)
    return codes.pop() if len(codes) == 1 else "?"


def _value_key(holder: Mapping[str, Any]) -> str | Literal[False] | None:
    """The one ``value[x]`` key present, None when there is none, False when several."""
    return _value_key_of(tuple(holder))


@functools.lru_cache(maxsize=1024)  # Observations and components come in a few shapes
def _value_key_of(keys: tuple[object, ...]) -> str | Literal[False] | None:
    found: str | None = None
    for k in keys:
        if isinstance(k, str) and k.startswith("value") and k[5:6].isupper():
            if found is not None:
                return False
            found = k
    return found


def _parse_instant(text: object) -> tuple[datetime, int] | None:
    """A FHIR date/dateTime/instant as (start of its period in UTC, precision 1-4)."""
    if not isinstance(text, str):
        return None
    return _parse_instant_text(text)


@functools.lru_cache(maxsize=4096)  # a chart's dates come back on every call for it
def _parse_instant_text(text: str) -> tuple[datetime, int] | None:
    m = _DATE_TIME.fullmatch(text)
    if m is None:
        return None
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    try:
        if hh is None:
            start = datetime(int(y), int(mo or 1), int(d or 1), tzinfo=UTC)
            return start, 1 + (mo is not None) + (d is not None)
        offset = timedelta(0)
        if tz != "Z":
            sign = -1 if tz[0] == "-" else 1
            offset = sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
        micro = int((frac or "0")[:6].ljust(6, "0"))
        local = datetime(int(y), int(mo), int(d), int(hh), int(mi), min(int(ss), 59), micro,
                         tzinfo=timezone(offset))
        return local.astimezone(UTC), 4
    except (ValueError, OverflowError):
        return None


def _date_as_sent(res: Mapping[str, Any]) -> str | None:
    """The date of an Observation as the EHR wrote it (its own time zone, its precision),
    for people to read: ``1 Oct 2026``, ``Oct 2026``, ``2026``."""
    period = _dict(res.get("effectivePeriod"))
    for raw in (res.get("effectiveDateTime"), res.get("effectiveInstant"),
                period.get("end") if period is not None else None, res.get("issued")):
        if isinstance(raw, str):
            shown = _shown_as_sent(raw)
            if shown is not None:
                return shown
    return None


@functools.lru_cache(maxsize=4096)  # like _parse_instant_text: a chart's dates come back
def _shown_as_sent(raw: str) -> str | None:
    """``raw`` (a FHIR date) as ``_date_as_sent`` shows it; None when it is not a date."""
    if _parse_instant_text(raw) is None:
        return None
    m = _DATE_TIME.fullmatch(raw)
    assert m is not None
    y, mo, d = m.group(1), m.group(2), m.group(3)
    return show_date(datetime(int(y), int(mo or 1), int(d or 1), tzinfo=UTC),
                     1 + (mo is not None) + (d is not None))


@functools.cache
def _known_zone(name: str) -> bool:
    """Whether ``name`` is an IANA time zone this machine knows."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


# --- internal records ------------------------------------------------------------------------


class _Unusable(Exception):
    """The winning Observation cannot supply its fact(s)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Fatal(Exception):
    """The input cannot be evaluated; carries the issues."""

    def __init__(self, issues: list[InputIssue]) -> None:
        super().__init__("invalid input")
        self.issues = issues


@dataclass
class _Entry:
    index: int
    resource: dict[str, Any]
    rtype: str
    ref: str | None  # Type/id, else fullUrl
    full_url: str | None
    valid: bool = True
    item: str | None = None  # the linkId, for an answer read from a QuestionnaireResponse

    @property
    def location(self) -> str:
        return self.ref if self.ref is not None else f"Bundle.entry[{self.index}]"

    @property
    def entry_path(self) -> str:
        return f"Bundle.entry[{self.index}]"

    @property
    def named(self) -> str:
        name = self.ref if self.ref is not None else f"{self.rtype} without id or fullUrl"
        return f"{name} item '{self.item}'" if self.item is not None else name


@dataclass
class _Candidate:
    entry: _Entry
    spec: _Spec
    key: tuple[int, datetime, int, str]
    _canonical: str | None = field(default=None, repr=False)

    @property
    def canonical(self) -> str:
        if self._canonical is None:
            self._canonical = _canonical(self.entry)
        return self._canonical


# --- the reader ---------------------------------------------------------------------------


class _Reader:
    def __init__(self, imap: InputMap, as_of: datetime, validate: bool) -> None:
        self.imap = imap
        self.as_of = as_of
        self.validate = validate
        self.issues: list[InputIssue] = []
        self.facts: dict[str, Fact] = {}
        self.condition_sources: dict[str, set[str]] = {}
        self.preliminary_sources: set[str] = set()
        self.not_pregnant: list[_Entry] = []
        self.extras: dict[str, object] = {}
        self.response_entries: list[_Entry] = []
        self.previous: PreviousPlan | None = None
        self.follow_up: FollowUp | None = None
        self.notes: list[AnswerNote] = []
        # red-flag answer states the rules read (red-flag-discordant, -unreadable, ...)
        self.answer_states: dict[str, set[str]] = {}
        # progress across visits, when each fact's answer was recorded, the patient's zone
        self.progress: list[ProgressPoint] = []
        self.recorded: dict[str, datetime] = {}
        self.time_zone: str | None = None

    # reporting
    def note(self, entry: _Entry | None, severity: str, code: str, message: str) -> None:
        if entry is not None and entry.item is not None:
            message = f"item '{entry.item}': {message}"
        self.issues.append(InputIssue(severity, code, message,
                                      entry.location if entry is not None else None))

    @staticmethod
    def fatal(message: str, code: str = "structure", location: str | None = None) -> NoReturn:
        raise _Fatal([InputIssue("error", code, message, location)])

    # --- top level
    def read(self, data: object) -> PatientFacts:
        bundle = self.load(data)
        entries = self.entries(bundle)
        patient = self.one_patient(entries)
        subject = patient.ref
        assert subject is not None  # one_patient guarantees it
        self.check_subjects(entries, patient)
        self.contained(entries, patient)

        self.patient_facts(patient)
        # an Observation that fails strict validation is reported and not used, except a
        # red-flag answer: that is read all the same (a YES is never lost)
        observations = [e for e in entries if e.rtype == "Observation"]
        # a questionnaire's answers are read as Observations: the same rules, one code path
        observations += self.questionnaire_answers(
            [e for e in entries if e.rtype == "QuestionnaireResponse"])
        self.observation_facts(observations)
        self.startback_consistency()
        self.condition_facts([e for e in entries if e.rtype == "Condition" and e.valid])
        self.careplans([e for e in entries if e.rtype == "CarePlan" and e.valid])
        self.responses(self.response_entries)
        self.merge_conditions()
        self.merge_answer_states()

        return PatientFacts.build(
            subject, self.as_of, self.facts.values(), self.issues, follow_up=self.follow_up,
            answer_notes=self.notes, progress=self.progress, time_zone=self.time_zone,
            recorded=[(n, t) for n, t in self.recorded.items() if n in self.facts],
            extras=self.extras or None)

    def load(self, data: object) -> dict[str, Any]:
        """The Bundle as a dict. JSON text is parsed strictly (``parse_json``: invalid UTF-8,
        a lone surrogate, a key twice in one object are refused, naming where); a dict given
        directly is checked for lone surrogates (they could not be written back out)."""
        try:
            if isinstance(data, str | bytes | bytearray):
                data = parse_json(data)
            else:
                where = unusable_text_path(data)
                if where is not None:
                    raise surrogate_error(where)
        except JSONTextError as e:
            self.fatal(e.describe("Bundle"), code=e.code,
                       location=e.where("Bundle") if e.path else None)
        if not isinstance(data, dict):
            self.fatal(f"expected a FHIR Bundle (a JSON object); got a JSON {_json_type(data)}")
        rtype = data.get("resourceType")
        if rtype != "Bundle":
            got = (f"a {rtype[:64]} resource" if isinstance(rtype, str) and rtype
                   else "an object without resourceType")
            self.fatal(f"expected a FHIR Bundle; got {got}")
        btype = data.get("type")
        if not isinstance(btype, str) or btype not in BUNDLE_TYPES:
            shown = f"'{btype}'" if isinstance(btype, str) else "missing or not a code"
            self.fatal(
                f"Bundle.type {shown} is not accepted; send a collection, searchset, "
                "transaction or batch Bundle",
                code="not-supported", location="Bundle.type",
            )
        if "entry" in data and not isinstance(data["entry"], list):
            self.fatal("Bundle.entry must be a list", location="Bundle.entry")
        if self.validate:
            shell = {k: v for k, v in data.items() if k != "entry"}
            if "entry" in data:
                shell["entry"] = [
                    {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
                    for e in data["entry"]
                ]
            problem = _validation_problem(Bundle, shell)
            if problem is not None:
                self.fatal(f"the Bundle is not valid FHIR R4: {problem}", location="Bundle")
        return data

    def entries(self, bundle: dict[str, Any]) -> list[_Entry]:
        out: list[_Entry] = []
        fatal: list[InputIssue] = []
        for i, raw in enumerate(_list(bundle.get("entry"))):
            if not isinstance(raw, dict):
                path = f"Bundle.entry[{i}]"
                fatal.append(InputIssue("error", "structure", f"{path} is not an object", path))
                continue
            full_url = _str(raw.get("fullUrl"))
            res = raw.get("resource")
            if not isinstance(res, dict):
                where = full_url or f"Bundle.entry[{i}]"
                self.issues.append(InputIssue("information", "not-supported",
                                              "entry has no resource; ignored", where))
                continue
            rtype = _str(res.get("resourceType"))
            rid = _str(res.get("id"))
            ref = f"{rtype}/{rid}" if rtype is not None and rid is not None else full_url
            entry = _Entry(i, res, rtype or "resource", ref, full_url)
            if rtype is None:
                self.note(entry, "warning", "structure",
                          "entry resource has no resourceType; ignored")
                continue
            model = MODELS.get(rtype)
            if model is None:
                self.note(entry, "information", "not-supported",
                          f"{rtype[:64]} resources are not used by this version; ignored")
                continue
            if self.validate:
                problem = _validation_problem(model, res)
                if problem is not None:
                    entry.valid = False
                    if rtype == "Patient":
                        fatal.append(InputIssue(
                            "error", "structure",
                            f"the Patient ({entry.named}) is not valid FHIR R4: {problem}",
                            entry.entry_path))
                    else:
                        self.note(entry, "warning", "structure",
                                  f"not valid FHIR R4, ignored: {problem}")
            out.append(entry)
        if fatal:
            raise _Fatal(fatal)
        return out

    def one_patient(self, entries: list[_Entry]) -> _Entry:
        patients = [e for e in entries if e.rtype == "Patient"]
        if not patients:
            self.fatal("the Bundle has no Patient; exactly one is required", code="required",
                       location="Bundle.entry")
        if len(patients) > 1:
            raise _Fatal([
                InputIssue("error", "business-rule",
                           f"the Bundle has {len(patients)} Patients ({p.named} is one); "
                           "exactly one is required", p.entry_path)
                for p in patients
            ])
        patient = patients[0]
        if patient.ref is None:
            self.fatal("the Patient has neither an id nor a fullUrl, so nothing can refer "
                       "to it", code="required", location=patient.entry_path)
        return patient

    def check_subjects(self, entries: list[_Entry], patient: _Entry) -> None:
        accepts = _SubjectMatcher(_str(patient.resource.get("id")), patient.full_url)
        fatal: list[InputIssue] = []
        for e in entries:
            if e.rtype not in SUBJECT_TYPES:
                continue
            subject = _dict(e.resource.get("subject"))
            reference = _str(subject.get("reference")) if subject is not None else None
            if reference is None:
                if e.valid:
                    fatal.append(InputIssue(
                        "error", "business-rule",
                        f"{e.named} has no subject reference, so it cannot be tied to the "
                        f"Bundle's Patient ({patient.ref})", e.entry_path))
            elif not accepts(reference):
                fatal.append(InputIssue(
                    "error", "business-rule",
                    f"{e.named} is about another subject, not the Bundle's Patient "
                    f"({patient.ref}); resources about different patients are never "
                    "evaluated together", e.entry_path))
        if fatal:
            raise _Fatal(fatal)

    def contained(self, entries: list[_Entry], patient: _Entry) -> None:
        """Contained resources are not read; each is reported (nothing dropped silently),
        and one about another patient is reported as such (input contract v2)."""
        accepts = _SubjectMatcher(_str(patient.resource.get("id")), patient.full_url)
        for e in entries:
            for i, raw in enumerate(_list(e.resource.get("contained"))):
                res = _dict(raw)
                rtype = _str(res.get("resourceType")) if res is not None else None
                rid = _str(res.get("id")) if res is not None else None
                what = f"contained[{i}] ({rtype or 'no resourceType'}"
                what += f" #{rid})" if rid else ")"
                subject = _dict(res.get("subject")) if res is not None else None
                ref = _str(subject.get("reference")) if subject is not None else None
                if ref is not None and not ref.startswith("#") and not accepts(ref):
                    self.note(e, "warning", "business-rule",
                              f"{what} is about another subject, not the Bundle's Patient; "
                              "contained resources are not read, so it was not used")
                else:
                    self.note(e, "information", "not-supported",
                              f"{what}: contained resources are not read; send it as an "
                              "entry of its own to have it used")

    # --- Patient
    def patient_facts(self, patient: _Entry) -> None:
        res, src = patient.resource, _sources(patient)
        self.patient_time_zone(patient)
        spec = self.imap.age
        birth = res.get("birthDate")
        if spec is not None and birth is not None:
            age, partial = _age(birth, self.as_of)
            oldest = _age(birth, self.as_of, oldest=True)[0]
            if age is None:
                self.note(patient, "warning", "value", "birthDate is not a valid date; age "
                          "is unknown")
            elif not _in_range(spec, age):
                self.note(patient, "warning", "value",
                          f"birthDate gives an age outside {_fmt(spec.minimum)}-"
                          f"{_fmt(spec.maximum)} at the as-of instant; age is unknown")
            else:
                self.facts[spec.name] = Fact(spec.name, age, src)
                self.oldest_age(patient, age, oldest, partial)
        spec = self.imap.sex
        gender = res.get("gender")
        if spec is not None and gender is not None:
            if isinstance(gender, str) and gender in spec.codes:
                self.facts[spec.name] = Fact(spec.name, gender, src)
            else:
                self.note(patient, "warning", "value",
                          f"gender is not one of {', '.join(sorted(spec.codes))}; sex is "
                          "unknown")

    def patient_time_zone(self, patient: _Entry) -> None:
        """The patient's IANA time zone (Patient.extension ``timezone`` or ``tz-code``,
        valueCode), for showing dates to people; an unknown zone is reported and dates are
        shown in UTC."""
        for raw in _list(patient.resource.get("extension")):
            ext = _dict(raw)
            if ext is None or ext.get("url") not in TIMEZONE_EXTENSIONS:
                continue
            zone = ext.get("valueCode")
            if isinstance(zone, str) and _known_zone(zone):
                self.time_zone = zone
                return
            self.note(patient, "warning", "value",
                      "the time-zone extension does not name an IANA time zone (valueCode, "
                      "e.g. Europe/London); dates are shown in UTC")
            return

    def oldest_age(self, patient: _Entry, age: int, oldest: int | None, partial: bool) -> None:
        """``age-oldest-possible``: red-flag age thresholds use the oldest age a partial
        birthDate allows (input contract v2), and the output says so."""
        name = "age-oldest-possible"
        if oldest is None or name not in self.imap.names:
            return
        src = _sources(patient)
        self.facts[name] = Fact(name, oldest, src)
        if partial and oldest != age:
            text = ("The birth date is incomplete: "
                    f"the patient is {age} to {oldest} years old; red-flag age thresholds use "
                    f"the oldest possible age ({oldest}).")
            self.notes.append(AnswerNote((name,), "partial-birth-date", text, src))
        if partial:
            self.note(patient, "information", "informational",
                      f"birthDate is a partial date; age is the minimum possible ({age}) and "
                      f"red-flag age thresholds use the oldest possible ({oldest})")

    # --- Observations
    def observation_facts(self, entries: list[_Entry]) -> None:
        by_code = self.imap.observations
        groups: dict[str, list[_Candidate]] = {}
        follow_ups: list[_Entry] = []
        for e in entries:
            res = e.resource
            if not e.valid and not self.red_flag_answer(e):
                continue  # reported when it failed validation
            status = _str(res.get("status"))
            if status is None or status not in USED_STATUS:
                if status is not None and status in IGNORED_STATUS:
                    self.note(e, "information", "informational",
                              f"status '{status}': ignored")
                else:
                    self.note(e, "warning", "value",
                              "status is missing or not an Observation status; ignored")
                continue
            codes = _codings(res.get("code"))
            if not _FOLLOW_UP_KEYS.isdisjoint(codes):
                follow_ups.append(e)  # read once the previous plan is known
                continue
            matched = [by_code[c] for c in codes if c in by_code]
            specs = set(matched) if len(matched) > 1 else matched  # one: no hashing
            if not specs:
                shown = ", ".join(f"{s}|{c}" for s, c in sorted(codes)) or "no coding"
                self.note(e, "information", "not-supported",
                          f"code ({shown}) is not in the knowledge base; ignored")
                continue
            if not e.valid:
                self.note(e, "warning", "structure",
                          "read all the same: a red-flag answer is never dropped for an "
                          "invalid element it does not need")
            if len(specs) > 1 and not all(s.red_flag for s in specs):
                names = ", ".join(sorted(s.name for s in specs))
                self.note(e, "warning", "value",
                          f"code maps to several facts ({names}); ignored")
                continue
            if len(specs) > 1:  # a combined red-flag question: its answer is each item's
                names = ", ".join(sorted(s.name for s in specs))
                self.note(e, "information", "informational",
                          f"coded with several red-flag questions ({names}); the answer "
                          "counts for each")
            key = (*self.when(e), e.ref or "")
            for spec in specs if len(specs) == 1 else sorted(specs, key=lambda s: s.name):
                groups.setdefault(spec.name, []).append(_Candidate(e, spec, key))
        for name in sorted(groups):
            group = groups[name]
            if group[0].spec.red_flag:
                self.use_red_flag(group)
            else:
                self.use_latest(group)
        self.response_entries = follow_ups

    def questionnaire_answers(self, entries: list[_Entry]) -> list[_Entry]:
        """Each question a QuestionnaireResponse answers, as an Observation-shaped entry
        (``_questionnaire_response``): ``authored`` is its date; completed and amended are
        used, in-progress and stopped read as preliminary, entered-in-error (or any other
        status) ignored and reported."""
        out: list[_Entry] = []
        for e in entries:
            res = e.resource
            status = _str(res.get("status"))
            if status is None or status not in QR_STATUS:
                if status == "entered-in-error":
                    self.note(e, "information", "informational",
                              "status 'entered-in-error': ignored, with all its answers")
                else:
                    self.note(e, "warning", "value", "status is missing or not a "
                              "QuestionnaireResponse status; ignored, with all its answers")
                continue
            if QR_STATUS[status] == "preliminary":
                self.note(e, "information", "informational",
                          f"status '{status}': the questionnaire was not finished; its "
                          "answers are read as preliminary")
            authored = res.get("authored")
            if authored is not None and _parse_instant(authored) is None:
                self.note(e, "warning", "value",
                          "authored is not a valid FHIR date; the answers are undated")
                authored = None
            answers, problems = item_answers(res, self.imap.link_ids, self.imap.question_codes,
                                             QR_STATUS[status], cast(str | None, authored))
            for severity, code, message in problems:
                self.note(e, severity, code, message)
            if not answers and not problems:
                self.note(e, "information", "informational", "no answered item; nothing read")
            out += [_Entry(e.index, a.observation, "Observation", e.ref, e.full_url, e.valid,
                           item=a.link_id) for a in answers]
        return out

    def startback_consistency(self) -> None:
        """STarT Back totals that contradict each other or the items are not used (input
        contract v2): the psychosocial subscale above the total, or a total that differs
        from the nine items sent with it. The items, when all nine are there, give the
        totals instead (cds computes them)."""
        total, sub = self.facts.get("startback-total"), self.facts.get("startback-psychosocial")
        items = [self.facts.get(f"startback-item-{i}") for i in range(1, 10)]
        bad: list[tuple[Fact, str]] = []
        if total is not None and sub is not None and float(sub.value) > float(total.value):
            bad += [(sub, "the psychosocial subscale is above the total"),
                    (total, "the psychosocial subscale is above the total")]
        else:
            # what the items sent allow: at least the agreements, at most those plus the
            # items not sent (all nine sent: exactly the agreements)
            for fact, part in ((total, items), (sub, items[4:])):
                agreed = sum(1 for i in part if i is not None and i.value is True)
                unknown = sum(1 for i in part if i is None)
                if fact is not None and not agreed <= float(fact.value) <= agreed + unknown:
                    bad.append((fact, "it does not agree with the items sent with it"))
        for fact, why in dict.fromkeys(bad):
            self.facts.pop(fact.name, None)
            for src in fact.sources:
                self.issues.append(InputIssue(
                    "warning", "business-rule",
                    f"{fact.name} is inconsistent ({why}); it counts as missing"
                    + (" and the items give it" if all(i is not None for i in items) else ""),
                    src))

    def red_flag_answer(self, e: _Entry) -> bool:
        """Whether every code of the Observation is a red-flag question's."""
        codes = [c for c in _codings(e.resource.get("code")) if c in self.imap.observations]
        return bool(codes) and all(self.imap.observations[c].red_flag for c in codes)

    def when(self, e: _Entry) -> tuple[int, datetime, int]:
        """(dated, start instant, precision) of an Observation, for latest-wins. A period
        that began by the as-of instant and ends after it is dated at the as-of instant (the
        finding existed then)."""
        res = e.resource
        period = _dict(res.get("effectivePeriod"))
        if period is None:  # the usual case: a valid effectiveDateTime decides
            parsed = _parse_instant(res.get("effectiveDateTime"))
            if parsed is not None:
                return 1, parsed[0], parsed[1]
        elif res.get("effectiveDateTime") is None:
            began = _parse_instant(period.get("start"))
            ends = _parse_instant(period.get("end"))
            if began is not None and ends is not None and began[0] <= self.as_of < ends[0]:
                return 1, self.as_of, 4
        for label, raw in (
            ("effectiveDateTime", res.get("effectiveDateTime")),
            ("effectiveInstant", res.get("effectiveInstant")),
            ("effectivePeriod.end", period.get("end") if period is not None else None),
            ("issued", res.get("issued")),
        ):
            if raw is None:
                continue
            parsed = _parse_instant(raw)
            if parsed is not None:
                return 1, parsed[0], parsed[1]
            self.note(e, "warning", "value", f"{label} is not a valid FHIR date; not used")
        return 0, _UNDATED, 0

    def use_latest(self, candidates: list[_Candidate]) -> None:
        winner = self.latest(candidates)
        if winner is not None:
            self.use(winner)
        measure = PROGRESS_FACTS.get(candidates[0].spec.name)
        if measure is not None:
            self.progress_points(measure, candidates, winner)

    def progress_points(self, measure: Measure, candidates: list[_Candidate],
                        winner: _Candidate | None) -> None:
        """Every dated, readable value of a progress measure that existed at the as-of
        instant, each marked used, stale (the latest, too old: counted as missing) or
        superseded (an earlier one: not read). Nothing is reported here: ``latest`` and
        ``use`` reported each of them already."""
        name = candidates[0].spec.name
        fact = self.facts.get(name)
        allowed = self.as_of + self.imap.clock_skew
        current = [c for c in candidates if c.key[0] and c.key[1] <= allowed + (
            _EARLIEST_ZONE if c.key[2] < 4 else timedelta(0))]
        latest = max(current, key=lambda c: c.key, default=None)
        for c in current:
            try:
                values = dict(_extract(c.spec, c.entry.resource, []))
            except _Unusable:
                continue
            value = values.get(name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            src = _sources(c.entry)
            role: Role
            if c is winner and fact is not None and fact.sources == src:
                role, instead = "used", None
            elif c is latest and winner is None:
                role, instead = "stale", None
            else:
                role = "superseded"
                instead = fact.sources[0] if fact is not None and fact.sources else None
            self.progress.append(ProgressPoint(measure, c.key[1], float(value), role, src,
                                               instead))

    def latest(self, candidates: list[_Candidate]) -> _Candidate | None:
        """The current answer among Observations of one fact (the others reported), or None
        when none is current (recorded after the as-of instant, or stale)."""
        # what was recorded after the as-of instant did not exist then (reproducible runs)
        current = self.not_in_future(candidates)
        if not current:
            return None
        candidates = current
        if len(candidates) == 1:  # the usual case: one answer, nothing to compare
            winner = candidates[0]
        else:
            top = max(c.key for c in candidates)
            tied = [c for c in candidates if c.key == top]
            winner = max(tied, key=lambda c: c.canonical) if len(tied) > 1 else tied[0]
        for c in candidates:
            if c is winner:
                continue
            if c.key[:3] == winner.key[:3] and c.key[0]:
                why = f"has the same date as {winner.entry.named}, which is used instead"
            elif c.key[:3] == winner.key[:3]:
                why = f"is undated, like {winner.entry.named}, which is used instead"
            else:
                why = f"superseded by newer {winner.entry.named}"
            if c.entry.ref is not None and c.entry.ref == winner.entry.ref:
                why = "duplicate entry of the same resource; one copy is used"
            self.note(c.entry, "information", "informational", f"{why}; ignored")
        limit = winner.spec.max_age_days
        if limit is not None and winner.key[0]:
            age_days = (self.as_of - winner.key[1]).total_seconds() / 86400
            if age_days > limit:
                self.note(winner.entry, "warning", "business-rule",
                          f"recorded {age_days:.0f} days before the as-of instant, older than "
                          f"the {limit:g}-day limit for {winner.spec.name} (configurable): "
                          "stale, so it counts as missing and should be asked again")
                return None
        return winner

    def not_in_future(self, candidates: list[_Candidate]) -> list[_Candidate]:
        """The candidates that existed at the as-of instant. Answers recorded up to the
        clock-skew tolerance after it count (EHR and server clocks differ); later ones are
        reported and ignored."""
        latest_allowed = self.as_of + self.imap.clock_skew
        current = []
        for c in candidates:
            # a date without a time has begun somewhere once it has begun at UTC+14
            allowed = latest_allowed + (_EARLIEST_ZONE if c.key[2] < 4 else timedelta(0))
            if c.key[0] and c.key[1] > allowed:
                self.note(c.entry, "information", "informational",
                          "recorded after the as-of instant (beyond the "
                          f"{_fmt(self.imap.clock_skew.total_seconds() / 60)}-minute clock-skew "
                          "tolerance); ignored")
            else:
                current.append(c)
        return current

    # --- red-flag answers (input contract v2: red-flag answers are safety data)
    def use_red_flag(self, candidates: list[_Candidate]) -> None:
        if len(candidates) == 1 and self.one_current_no(candidates[0]):
            return
        spec = candidates[0].spec
        answers: dict[int, tuple[Answer, _Candidate]] = {}
        current = self.not_in_future(candidates)
        # the canonical JSON orders only answers of one instant, precision and reference:
        # it is computed for those alone (a json.dumps of the resource each)
        keys = [c.key for c in current]
        for c in current:
            value = self.red_flag_value(c)
            if value is _NO_ANSWER:
                continue
            if c.entry.resource.get("status") == "preliminary" and c.entry.item is None:
                self.note(c.entry, "information", "informational",
                          "status 'preliminary': used, but the result is not final")
            tie = c.canonical if keys.count(c.key) > 1 else ""
            a = Answer(value if isinstance(value, bool) else None,
                       c.key[1] if c.key[0] else None,
                       _sources(c.entry), (c.key[2], c.key[3], tie), c.key[2],
                       _date_as_sent(c.entry.resource) if c.key[0] else None)
            answers[id(a)] = (a, c)
        reading = read_red_flag(spec.question, [a for a, _ in answers.values()], self.as_of,
                                spec.max_age_days, self.imap.discordance_days, spec.lifelong)
        used = {id(a) for a in reading.used}
        self.report_old_answers([(c, a.value, id(a) in used) for a, c in answers.values()
                                 if a.value is not None], reading.value)
        if reading.value is not None:
            behind = [answers[i][1] for i in used]
            preliminary = all(c.entry.resource.get("status") == "preliminary" for c in behind)
            self.facts[spec.name] = Fact(spec.name, reading.value, reading.sources, preliminary)
            dates = [a.when for a in reading.used if a.when is not None]
            if dates:
                self.recorded[spec.name] = max(dates)
        for kind, text, sources in reading.notes:
            states = []
            if kind in ("discordant", "contradicted"):
                states.append("red-flag-discordant")
            if kind == "unreadable":
                states.append("red-flag-unreadable")
                if spec.hold_when_unreadable:
                    states.append("red-flag-unreadable-holding")
            for state in states:
                self.answer_states.setdefault(state, set()).update(sources)
            self.notes.append(AnswerNote((spec.name, *states), kind, text, sources))

    def one_current_no(self, c: _Candidate) -> bool:
        """The usual red-flag question: one answer, a dated ``valueBoolean`` false recorded
        by the as-of instant (plus the clock-skew tolerance) and within the item's age limit.
        The general reading uses it as it is, with no note but the preliminary one: done here
        directly (True); anything else is left to the general reading (False, nothing done)."""
        res = c.entry.resource
        if not c.key[0] or _value_key(res) != "valueBoolean" or res["valueBoolean"] is not False:
            return False
        allowed = self.as_of + self.imap.clock_skew + (
            _EARLIEST_ZONE if c.key[2] < 4 else timedelta(0))
        limit = c.spec.max_age_days
        if c.key[1] > allowed or (limit is not None and max(
                0.0, (self.as_of - c.key[1]).total_seconds() / 86400) > limit):
            return False
        preliminary = res.get("status") == "preliminary"
        if preliminary and c.entry.item is None:
            self.note(c.entry, "information", "informational",
                      "status 'preliminary': used, but the result is not final")
        name = c.spec.name
        self.facts[name] = Fact(name, False, _sources(c.entry), preliminary)
        self.recorded[name] = c.key[1]
        return True

    def report_old_answers(self, answers: list[tuple[_Candidate, bool | None, bool]],
                           value: bool | None) -> None:
        """Every readable dated answer older than the item's limit is reported: a "no" as
        stale (the question is asked again), a "yes" as still counting (it never expires
        silently); answers not in use are reported too (``answers``: candidate, its answer,
        whether the reading rests on it)."""
        for c, _answer, in_use in answers:
            limit = c.spec.max_age_days
            age_days = (self.as_of - c.key[1]).total_seconds() / 86400
            stale = limit is not None and c.key[0] and age_days > limit
            if stale and in_use and value:
                self.note(c.entry, "warning", "business-rule",
                          f"recorded {age_days:.0f} days before the as-of instant, older than "
                          f"the {limit:g}-day limit for {c.spec.name} (configurable): a red-flag "
                          "YES does not expire; it counts, reported as not re-assessed since")
            elif stale and not in_use:
                self.note(c.entry, "warning", "business-rule",
                          f"recorded {age_days:.0f} days before the as-of instant, older than "
                          f"the {limit:g}-day limit for {c.spec.name} (configurable): "
                          "stale, so it counts as missing and should be asked again")
            elif not in_use:
                self.note(c.entry, "information", "informational",
                          "not the answer in use for this red-flag question (see the plan's "
                          "notes on how the answers were read)")

    def red_flag_value(self, c: _Candidate) -> bool | str | None:
        """True/False for a readable answer; None for one that was received but cannot be
        read (reported); ``_NO_ANSWER`` when the Observation carries no answer at all."""
        res = c.entry.resource
        key = _value_key(res)
        if key is None:
            odd = sorted(k for k in res if isinstance(k, str) and k.lower().startswith("value"))
            if odd:
                self.note(c.entry, "warning", "value",
                          f"{c.spec.name}: an answer was received under {odd[0]!r}, which is "
                          "not a FHIR value[x]; it could not be read")
                return None
            if _list(res.get("component")):
                self.note(c.entry, "warning", "value",
                          f"{c.spec.name}: an answer was received only in a component, which "
                          "is not where a red-flag answer is read; it could not be read")
                return None
            self.note(c.entry, "warning", "required",
                      f"{_no_value(res)}; {c.spec.name} counts as unanswered")
            return _NO_ANSWER
        if key == "valueBoolean" and isinstance(res[key], bool):
            return bool(res[key])
        if key == "valueCodeableConcept":
            said = {YES_NO[c] for c in _codings(res[key]) if c in YES_NO}
            if len(said) == 1:
                return said.pop()
            why = ("both a Yes and a No code" if said else
                   "no Yes/No code (SNOMED 373066001/373067005, LOINC LA33-6/LA32-8)")
        else:
            why = f"expected valueBoolean or a Yes/No code; got {_got(key, res[key])}" if (
                key is not False) else "more than one value[x]"
        self.note(c.entry, "warning", "value",
                  f"{c.spec.name}: an answer was received but could not be read ({why})")
        return None

    def merge_answer_states(self) -> None:
        for name, sources in sorted(self.answer_states.items()):
            if name in self.imap.names:
                self.facts[name] = Fact(name, True, tuple(sorted(sources)))

    def use(self, c: _Candidate) -> None:
        e, spec = c.entry, c.spec
        side_issues: list[tuple[str, str, str]] = []
        try:
            if spec.kind == "pregnancy":
                values = self.pregnancy(e)
            else:
                values = _extract(spec, e.resource, side_issues)
        except _Unusable as bad:
            self.note(e, "warning", bad.code, f"{bad.message}; {spec.name} counts as missing")
            return
        for severity, code, message in side_issues:
            self.note(e, severity, code, message)
        if spec.kind == "pregnancy":
            return
        preliminary = e.resource.get("status") == "preliminary"
        if preliminary and e.item is None:  # a questionnaire's status is reported once
            self.note(e, "information", "informational",
                      "status 'preliminary': used, but the result is not final")
        src = _sources(e)
        for name, value in values:
            self.facts[name] = Fact(name, value, src, preliminary)
            if c.key[0]:
                self.recorded[name] = c.key[1]

    def pregnancy(self, e: _Entry) -> list[tuple[str, Scalar]]:
        res = e.resource
        key = _value_key(res)
        if key is None:
            raise _Unusable("required", _no_value(res))
        if key != "valueCodeableConcept":
            raise _Unusable("value", f"pregnancy status must be a valueCodeableConcept; got "
                            f"{key or 'several value[x]'}")
        codes = set(_codings(res[key]))
        if PREGNANT in codes and NOT_PREGNANT not in codes:
            self.condition_sources.setdefault(
                self.imap.observations[PREGNANCY_STATUS].name, set()
            ).update(_sources(e))
            if res.get("status") == "preliminary":
                self.preliminary_sources.update(_sources(e))
                self.note(e, "information", "informational",
                          "status 'preliminary': used, but the result is not final")
        elif NOT_PREGNANT in codes and PREGNANT not in codes:
            self.not_pregnant.append(e)
        else:
            self.note(e, "information", "informational",
                      "pregnancy status answer is neither LA15173-0 (pregnant) nor "
                      "LA26683-5 (not pregnant); pregnancy is not recorded from it")
        return []

    # --- Conditions
    def condition_facts(self, entries: list[_Entry]) -> None:
        for e in entries:
            res = e.resource
            codes = _codings(res.get("code"))
            names = sorted({self.imap.conditions[c] for c in codes if c in self.imap.conditions})
            if not names:
                shown = ", ".join(f"{s}|{c}" for s, c in sorted(codes)) or "no coding"
                self.note(e, "information", "not-supported",
                          f"code ({shown}) is not in the knowledge base; ignored")
                continue
            verification = _status_code(res.get("verificationStatus"), VERIFICATION_STATUS)
            if verification in REMOVED_VERIFICATION:
                self.note(e, "information", "informational",
                          f"verificationStatus '{verification}': not counted")
                continue
            clinical = _status_code(res.get("clinicalStatus"), CLINICAL_STATUS)
            abated = clinical is None and any(str(k).startswith("abatement") for k in res)
            if clinical in INACTIVE_CLINICAL or abated:
                history = [n for n in names if n in self.imap.history]
                why = (f"clinicalStatus '{clinical}'" if clinical is not None
                       else "no clinicalStatus but an abatement")
                if history:
                    self.note(e, "information", "informational",
                              f"{why}: counted as a history ({', '.join(history)})")
                    for name in history:
                        self.condition_sources.setdefault(name, set()).update(_sources(e))
                else:
                    self.note(e, "information", "informational",
                              f"{why}: not active, not counted")
                continue
            if clinical is not None and clinical not in ACTIVE_CLINICAL:
                self.note(e, "warning", "value",
                          "clinicalStatus not recognised; counted as active")
            if verification in TENTATIVE_VERIFICATION:
                self.note(e, "information", "informational",
                          f"verificationStatus '{verification}': counted as present")
            elif verification == "?":
                self.note(e, "warning", "value",
                          "verificationStatus not recognised; counted as present")
            for name in names:
                self.condition_sources.setdefault(name, set()).update(_sources(e))

    def merge_conditions(self) -> None:
        for name, sources in self.condition_sources.items():
            preliminary = bool(sources) and sources <= self.preliminary_sources
            self.facts[name] = Fact(name, True, tuple(sorted(sources)), preliminary)
        if self.not_pregnant:
            pregnancy = self.imap.observations[PREGNANCY_STATUS].name
            for e in self.not_pregnant:
                if pregnancy in self.condition_sources:
                    self.note(e, "warning", "business-rule",
                              "says not pregnant, but an active pregnancy Condition is "
                              "recorded; pregnancy is counted")

    # --- previous plan
    def careplans(self, entries: list[_Entry]) -> None:
        """The previous plan: the latest CarePlan this project made (see "Follow-up")."""
        own: list[_Entry] = []
        for e in entries:
            res = e.resource
            if not own_careplan(res):
                self.note(e, "warning", "not-supported",
                          "not a CarePlan made by movement-cds (no instantiatesUri under "
                          f"{OWN_CAREPLAN_PREFIX}); ignored, so this is not read as a "
                          "follow-up of it")
                continue
            if res.get("status") == "entered-in-error":
                self.note(e, "information", "informational",
                          "status 'entered-in-error': not used as the previous plan")
                continue
            if e.ref is None:
                self.note(e, "warning", "required",
                          "a movement-cds CarePlan with neither an id nor a fullUrl: the "
                          "revised plan could not name it in CarePlan.replaces; not used as "
                          "the previous plan")
                continue
            when = _parse_instant(res.get("created"))
            if when is not None and when[0] > self.as_of:
                self.note(e, "information", "informational",
                          "created after the as-of instant; not used as the previous plan")
                continue
            own.append(e)
        if not own:
            return

        def created(e: _Entry) -> tuple[int, datetime, int, str, str]:
            parsed = _parse_instant(e.resource.get("created"))
            dated = (1, *parsed) if parsed is not None else (0, _UNDATED, 0)
            return (*dated, e.ref or "", _canonical(e))

        ranked = sorted(own, key=created)
        latest = ranked[-1]
        for e in ranked[:-1]:
            self.note(e, "information", "informational",
                      f"an older movement-cds CarePlan than {latest.named}, which is the "
                      "previous plan; ignored")
        self.previous = self.previous_plan(latest)
        self.follow_up = FollowUp(self.previous)
        self.note(latest, "information", "informational",
                  "the previous plan: this evaluation is a follow-up that revises it")

    def previous_plan(self, e: _Entry) -> PreviousPlan:
        res = e.resource
        ruleset = None
        for uri in _list(res.get("instantiatesUri")):
            if isinstance(uri, str) and uri.startswith(OWN_CAREPLAN_PREFIX):
                kb_id, bar, version = uri[len(OWN_CAREPLAN_PREFIX):].partition("|")
                ruleset = f"{kb_id}@{version}" if bar and kb_id and version else kb_id or None
                break
        parsed = _parse_instant(res.get("created"))
        exercises: list[PreviousExercise] = []
        avoided: list[str] = []
        seen: set[str] = set()
        for i, raw in enumerate(_list(res.get("activity"))):
            act = _dict(raw)
            detail = _dict(act.get("detail")) if act is not None else None
            if detail is None:
                continue  # a referral (activity.reference)
            codes = sorted({c for s, c in _codings(detail.get("code")) if s == EXERCISE_SYSTEM})
            if not codes:
                continue  # not an exercise (the check-in)
            where = f"activity[{i}]"
            if len(codes) > 1:
                self.note(e, "warning", "value",
                          f"{where} has several exercise codes; not read as an exercise")
                continue
            (ex,) = codes
            if detail.get("doNotPerform") is True:
                if ex not in avoided:
                    avoided.append(ex)
                continue
            status = detail.get("status")
            mapped = PREVIOUS_STATUS.get(status) if isinstance(status, str) else None
            if mapped is None:
                self.note(e, "warning", "value",
                          f"{where} ({ex}): status is missing or not one this version reads "
                          "for an exercise; not read as an exercise")
                continue
            if ex in seen:
                self.note(e, "warning", "value",
                          f"{where} ({ex}): the exercise is listed twice; the first is used")
                continue
            seen.add(ex)
            try:
                dose: ExerciseDose | None = _read_dose(detail)
            except _Unusable as bad:
                self.note(e, "warning", bad.code,
                          f"{where} ({ex}): the dose cannot be read ({bad.message}); it "
                          "counts as unknown")
                dose = None
            since, consecutive_bad = self.follow_up_state(e, where, ex, detail)
            exercises.append(PreviousExercise(ex, dose, mapped, since, consecutive_bad))
        return PreviousPlan(
            reference=e.location,
            created=parsed[0] if parsed is not None else None,
            ruleset=ruleset,
            exercises=tuple(exercises),
            avoided=tuple(avoided),
        )

    def follow_up_state(self, e: _Entry, where: str, ex: str,
                        detail: dict[str, Any]) -> tuple[datetime | None, int]:
        subs = _sub_extensions(detail, EXT_FOLLOW_UP_STATE)
        if subs is None:
            return None, 0
        since: datetime | None = None
        raw_since = subs.get("since", {}).get("valueDateTime")
        if raw_since is not None:
            parsed = _parse_instant(raw_since)
            if parsed is None:
                self.note(e, "warning", "value",
                          f"{where} ({ex}): follow-up state 'since' is not a FHIR dateTime; "
                          "unknown")
            else:
                since = parsed[0]
        bad = subs.get("consecutive-bad", {}).get("valueInteger", 0)
        if isinstance(bad, bool) or not isinstance(bad, int) or bad < 0:
            self.note(e, "warning", "value",
                      f"{where} ({ex}): follow-up state 'consecutive-bad' is not a "
                      "non-negative integer; read as 0")
            bad = 0
        return since, bad

    def responses(self, entries: list[_Entry]) -> None:
        """The patient's responses per exercise of the previous plan (see "Follow-up")."""
        if not entries:
            return
        previous = self.previous
        if previous is None:
            for e in entries:
                self.note(e, "warning", "business-rule",
                          "a follow-up response, but the input has no previous CarePlan made "
                          "by movement-cds to tie it to; ignored")
            return
        listed = {x.exercise_id for x in previous.exercises}
        groups: dict[tuple[str, str], list[_Candidate]] = {}
        for e in entries:
            codes = sorted({c for s, c in _codings(e.resource.get("code"))
                            if s == SCREEN and c in FOLLOW_UP_SPECS})
            if len(codes) > 1:
                self.note(e, "warning", "value",
                          f"coded as several follow-up responses ({', '.join(codes)}); "
                          "ignored")
                continue
            code = codes[0]
            names = self.response_exercise(e)
            if names is None:
                continue
            if names not in listed:
                why = ("lists as avoided" if names in previous.avoided
                       else "does not list")
                self.note(e, "warning", "business-rule",
                          f"a response about exercise '{names}', which the previous plan "
                          f"({previous.reference}) {why}; ignored")
                continue
            key = (*self.when(e), e.ref or "")
            groups.setdefault((names, code), []).append(
                _Candidate(e, FOLLOW_UP_SPECS[code], key))
        answers: dict[str, dict[str, Scalar]] = {}
        sources: dict[str, set[str]] = {}
        for ex, code in sorted(groups):
            winner = self.latest(groups[(ex, code)])
            if winner is None:
                continue
            e, spec = winner.entry, winner.spec
            try:
                value = _response_value(spec, e.resource)
            except _Unusable as bad:
                self.note(e, "warning", bad.code,
                          f"{bad.message}; this response about '{ex}' counts as missing")
                continue
            if e.resource.get("status") == "preliminary":
                self.note(e, "information", "informational",
                          "status 'preliminary': used, but the result is not final")
            answers.setdefault(ex, {})[spec.name] = value
            sources.setdefault(ex, set()).update(_sources(e))
        responses = tuple(_response(ex, answers[ex], sources[ex]) for ex in sorted(answers))
        self.follow_up = FollowUp(previous, responses)
        self.adherence(groups, frozenset(s for ss in sources.values() for s in ss))

    _ADHERENCE_FIELDS: Final = {"exercise-sessions-done": "done",
                                "exercise-sessions-prescribed": "prescribed"}

    def adherence(self, groups: Mapping[tuple[str, str], list[_Candidate]],
                  current: frozenset[str]) -> None:
        """Adherence per visit day from every dated, readable sessions-done and
        sessions-prescribed response (earlier visits' included); the day whose responses the
        revision read is marked ``response``, earlier days ``superseded``."""
        allowed = self.as_of + self.imap.clock_skew
        reports: list[tuple[datetime, str, str, int, str]] = []
        for (ex, code), candidates in groups.items():
            field_name = self._ADHERENCE_FIELDS.get(code)
            if field_name is None:
                continue
            for c in candidates:
                if not c.key[0] or c.key[1] > allowed + (
                        _EARLIEST_ZONE if c.key[2] < 4 else timedelta(0)):
                    continue
                try:
                    value = _response_value(c.spec, c.entry.resource)
                except _Unusable:
                    continue
                if isinstance(value, int) and not isinstance(value, bool):
                    reports.extend((c.key[1], ex, field_name, value, s)
                                   for s in _sources(c.entry)[:1])
        self.progress.extend(adherence_points(reports, current))

    def response_exercise(self, e: _Entry) -> str | None:
        """The exercise a response is about (its ``screen#exercise`` component), or None
        (reported)."""
        found: set[str] = set()
        components = 0
        for raw in _list(e.resource.get("component")):
            comp = _dict(raw)
            if comp is None or EXERCISE_COMPONENT not in _codings(comp.get("code")):
                continue
            components += 1
            found |= {c for s, c in _codings(comp.get("valueCodeableConcept"))
                      if s == EXERCISE_SYSTEM}
        if components == 0:
            self.note(e, "warning", "business-rule",
                      "a follow-up response without a component coded screen#exercise, so "
                      "it cannot be tied to an exercise; ignored")
            return None
        if len(found) != 1:
            what = "several exercises" if found else "no code of the exercise CodeSystem"
            self.note(e, "warning", "value",
                      f"the screen#exercise component names {what}; the response cannot be "
                      "tied to one exercise; ignored")
            return None
        return found.pop()


# --- helpers of the reader -------------------------------------------------------------------


class _SubjectMatcher:
    """Whether a subject reference names the Bundle's one Patient."""

    def __init__(self, pid: str | None, full_url: str | None) -> None:
        self.local = f"Patient/{pid}" if pid is not None else None
        self.full_url = full_url
        self.base: str | None = None  # the server base when the fullUrl is RESTful
        if full_url is not None and self.local is not None and full_url.endswith(
            "/" + self.local
        ) and full_url.startswith(("http://", "https://")):
            self.base = full_url[: -len(self.local)]

    def __call__(self, reference: str) -> bool:
        ref = reference
        if "/_history/" in ref:
            ref = ref.split("/_history/", 1)[0]
        if self.full_url is not None and ref == self.full_url:
            return True
        if self.local is None:
            return False
        if ref == self.local:
            return True
        if ref.startswith(("http://", "https://")) and ref.endswith("/" + self.local):
            return self.base is None or ref == self.base + self.local
        return False


def own_careplan(resource: Mapping[str, Any]) -> bool:
    """Made by this project: an instantiatesUri under the project's knowledge-base URI."""
    return any(isinstance(u, str) and u.startswith(OWN_CAREPLAN_PREFIX)
               for u in _list(resource.get("instantiatesUri")))


def _sub_extensions(holder: Mapping[str, Any], url: str) -> dict[str, dict[str, Any]] | None:
    """The sub-extensions (by url; the first of each) of the one extension ``url`` on
    ``holder``, or None when it is absent."""
    exts = [x for x in _list(holder.get("extension"))
            if isinstance(x, dict) and x.get("url") == url]
    if not exts:
        return None
    out: dict[str, dict[str, Any]] = {}
    for sub in _list(exts[0].get("extension")):
        if isinstance(sub, dict) and isinstance(sub.get("url"), str):
            out.setdefault(sub["url"], sub)
    return out


def _read_dose(detail: Mapping[str, Any]) -> ExerciseDose:
    """The dose of a previous plan's exercise activity, read back exactly as ``write_bundle``
    writes it (``scheduledTiming.repeat`` and the exercise-dose extension)."""
    timing = _dict(detail.get("scheduledTiming"))
    repeat = _dict(timing.get("repeat")) if timing is not None else None
    if repeat is None:
        raise _Unusable("required", "no scheduledTiming.repeat")
    frequency, period, unit = repeat.get("frequency"), repeat.get("period"), repeat.get(
        "periodUnit")
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise _Unusable("value", "scheduledTiming.repeat.frequency is not a positive integer")
    number = _number(period)
    if number is None or number <= 0 or not float(number).is_integer():
        raise _Unusable("value", "scheduledTiming.repeat.period is not a positive whole number")
    if unit not in ("d", "wk"):
        raise _Unusable("value", "scheduledTiming.repeat.periodUnit is not d or wk")
    subs = _sub_extensions(detail, EXT_EXERCISE_DOSE)
    if subs is None:
        raise _Unusable("required", "no exercise-dose extension")

    def integer(name: str) -> int | None:
        sub = subs.get(name)
        if sub is None:
            return None
        v = sub.get("valueInteger")
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _Unusable("value", f"{name} is not a non-negative valueInteger")
        return v

    def text(name: str) -> str | None:
        sub = subs.get(name)
        if sub is None:
            return None
        v = sub.get("valueString")
        if not isinstance(v, str) or not v.strip():
            raise _Unusable("value", f"{name} is not a valueString")
        return v

    hold: int | None = None
    if "hold-seconds" in subs:
        q = _dict(subs["hold-seconds"].get("valueQuantity"))
        v = _number(q.get("value")) if q is not None else None
        unit_s = (q.get("code") or q.get("unit")) if q is not None else None
        if v is None or v < 0 or not float(v).is_integer() or unit_s != "s":
            raise _Unusable("value", "hold-seconds is not a whole valueQuantity in s")
        hold = int(v)
    pain = text("pain-monitoring")
    if pain is None:
        raise _Unusable("required", "no pain-monitoring")
    return ExerciseDose(
        sets=integer("sets"),
        repetitions=integer("repetitions"),
        hold_seconds=hold,
        tempo=text("tempo"),
        frequency=frequency,
        period=int(number),
        period_unit=str(unit),
        load=text("load"),
        pain_monitoring=pain,
    )


def _response(exercise: str, answers: Mapping[str, Scalar],
              sources: set[str]) -> ExerciseResponse:
    def integer(name: str) -> int | None:
        v = answers.get(name)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def rating(name: str) -> Rating | None:
        v = answers.get(name)
        return cast(Rating, v) if isinstance(v, str) and v in RATINGS else None

    peripheralization = answers.get("peripheralization")
    return ExerciseResponse(
        exercise_id=exercise,
        pain_during=integer("pain_during"),
        next_morning=rating("next_morning"),
        sessions_done=integer("sessions_done"),
        sessions_prescribed=integer("sessions_prescribed"),
        perceived_effect=rating("perceived_effect"),
        peripheralization=peripheralization if isinstance(peripheralization, bool) else None,
        sources=tuple(sorted(sources)),
    )


def _response_value(spec: _Spec, res: Mapping[str, Any]) -> Scalar:
    """The checked top-level value of a follow-up response (raises ``_Unusable``)."""
    value = _read_value(spec, res, "")
    if value is None:
        raise _Unusable("required", _no_value(res))
    return value


def _sources(e: _Entry) -> tuple[str, ...]:
    return (e.ref,) if e.ref is not None else ()


def _canonical(e: _Entry) -> str:
    """The resource as canonical JSON: the last tie-breaker, so that order never matters."""
    try:
        return json.dumps(e.resource, sort_keys=True, default=repr)
    except (TypeError, ValueError, RecursionError):  # not JSON-like (only from a dict input)
        return ""


def _json_type(x: object) -> str:
    if isinstance(x, list):
        return "array"
    if isinstance(x, str):
        return "string"
    if isinstance(x, bool):
        return "boolean"
    if isinstance(x, int | float):
        return "number"
    if x is None:
        return "null"
    return type(x).__name__


def _validation_problem(model: type[BaseModel], data: dict[str, Any]) -> str | None:
    """None when ``data`` is a valid R4 resource; else a short, value-free summary."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        parts = []
        for err in errors[:3]:
            loc = ".".join(str(p) for p in err["loc"]) or "(resource)"
            msg = " ".join(str(err["msg"]).split())
            parts.append(f"{loc}: {msg[:120]}")
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        return "; ".join(parts) + more
    except Exception as exc:  # the model itself failed on junk: still "not valid"
        return f"could not be validated ({type(exc).__name__})"
    return None


def _age(birth: object, as_of: datetime, oldest: bool = False) -> tuple[int | None, bool]:
    """Whole years at the as-of date, from the last possible birth day (``oldest``: from the
    first possible one); (age, partial)."""
    if not isinstance(birth, str):
        return None, False
    m = _BIRTH_DATE.fullmatch(birth)
    if m is None:
        return None, False
    y, mo, d = m.groups()
    try:
        year = int(y)
        month = int(mo) if mo else (1 if oldest else 12)
        day = int(d) if d else (1 if oldest else calendar.monthrange(year, month)[1])
        born = date(year, month, day)
    except ValueError:
        return None, False
    today = as_of.date()
    age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    return age, d is None


def _in_range(spec: _Spec, x: int | float) -> bool:
    return (spec.minimum is None or x >= spec.minimum) and (
        spec.maximum is None or x <= spec.maximum
    )


def _no_value(holder: Mapping[str, Any]) -> str:
    reason = _dict(holder.get("dataAbsentReason"))
    codes = sorted(c for _, c in _codings(reason)) if reason is not None else []
    if codes:
        return f"no value (dataAbsentReason: {', '.join(codes)})"
    if reason is not None:
        return "no value (dataAbsentReason given)"
    return "no value"


def _extract(
    spec: _Spec, res: Mapping[str, Any], side_issues: list[tuple[str, str, str]]
) -> list[tuple[str, Scalar]]:
    """The facts one Observation supplies, or ``_Unusable``."""
    out: list[tuple[str, Scalar]] = []
    top = _read_value(spec, res, "")
    if top is not None:
        out.append((spec.name, top))
        if spec.unit == "%" and _possibly_a_fraction(res):
            side_issues.append(("warning", "value",
                                f"{spec.name} is at most 1 with unit '%': possibly a fraction "
                                "sent as a percentage; used as sent"))
    seen: set[str] = set()
    for i, raw in enumerate(_list(res.get("component"))):
        comp = _dict(raw)
        if comp is None:
            continue
        codes = set(_codings(comp.get("code")))
        sides = [s for s, c in _SIDES if c in codes] if LEFT in codes or RIGHT in codes else []
        if LBP_PROVOKED in codes and spec.provoked and not sides:
            name, label = f"{spec.name}.lbp-provoked", "lbp-provoked component"
            if _value_key(comp) != "valueBoolean" or not isinstance(comp["valueBoolean"], bool):
                if _value_key(comp) is None:
                    side_issues.append(("warning", "required",
                                        f"lbp-provoked component has {_no_value(comp)}"))
                    continue
                raise _Unusable("value", "the lbp-provoked component must be a valueBoolean")
            value: Scalar = comp["valueBoolean"]
        elif sides:
            if len(sides) > 1:
                raise _Unusable("value", f"component[{i}] is coded both left and right")
            if not spec.bilateral:
                raise _Unusable("value", f"{spec.name} is not a bilateral test, but a "
                                f"{sides[0]}-side component was sent")
            name, label = f"{spec.name}.{sides[0]}", f"{sides[0]}-side component"
            side_value = _read_value(spec, comp, f"{label}: ")
            if side_value is None:
                side_issues.append(("warning", "required",
                                    f"{label} has {_no_value(comp)}; that side is missing"))
                continue
            value = side_value
        else:
            side_issues.append(("information", "not-supported",
                                f"component[{i}] has a code this test does not use; ignored"))
            continue
        if name in seen:
            raise _Unusable("value", f"more than one {label}")
        seen.add(name)
        out.append((name, value))
    if not out:
        raise _Unusable("required", _no_value(res))
    return out


def _possibly_a_fraction(res: Mapping[str, Any]) -> bool:
    q = _dict(res.get("valueQuantity"))
    if q is None:
        return False
    number, unit = _number(q.get("value")), q.get("code", q.get("unit"))
    return unit == "%" and number is not None and 0 < number <= 1


def _read_value(spec: _Spec, holder: Mapping[str, Any], label: str) -> Scalar | None:
    """The checked value in ``holder`` (an Observation or a component), None if absent."""
    key = _value_key(holder)
    if key is None:
        return None
    if key is False:
        raise _Unusable("structure", f"{label}more than one value[x]")
    raw = holder[key]
    kind = spec.kind
    if kind == "boolean":
        if key == "valueBoolean" and isinstance(raw, bool):
            return raw
        raise _Unusable("value", f"{label}expected valueBoolean; got {_got(key, raw)}")
    if kind == "code":
        if key != "valueCodeableConcept":
            raise _Unusable("value", f"{label}expected valueCodeableConcept; got {key}")
        found = {c for s, c in _codings(raw) if s == SCREEN and c in spec.codes}
        if len(found) != 1:
            allowed = ", ".join(sorted(spec.codes))
            what = "several allowed codes" if found else "no allowed code"
            raise _Unusable("value", f"{label}valueCodeableConcept has {what} of the screen "
                            f"CodeSystem (allowed: {allowed})")
        return found.pop()
    # integer and decimal
    number: int | float
    if key == "valueInteger":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _Unusable("value", f"{label}valueInteger is not a JSON integer "
                            f"({_json_type(raw)})")
        number = raw
    elif key == "valueQuantity":
        number = _quantity(spec, raw, label)
    else:
        expected = "valueInteger or valueQuantity" if kind == "integer" else (
            "valueQuantity or valueInteger")
        raise _Unusable("value", f"{label}expected {expected}; got {_got(key, raw)}")
    if kind == "integer":
        if isinstance(number, float):
            if not number.is_integer():
                raise _Unusable("value", f"{label}expected a whole number")
            number = int(number)
    else:
        number = float(number)
    if not _in_range(spec, number):
        raise _Unusable("value", f"{label}value out of range "
                        f"{_fmt(spec.minimum)}-{_fmt(spec.maximum)}")
    return number


def _quantity(spec: _Spec, raw: object, label: str) -> int | float:
    q = _dict(raw)
    if q is None:
        raise _Unusable("value", f"{label}valueQuantity is not an object")
    number = _number(q.get("value"))
    if number is None:
        raise _Unusable("value", f"{label}valueQuantity has no numeric value")
    if "comparator" in q:
        raise _Unusable("value", f"{label}valueQuantity has a comparator; only exact values "
                        "are used")
    code, system = q.get("code"), q.get("system")
    if code is not None:
        if system is not None and system != UCUM:
            raise _Unusable("value", f"{label}valueQuantity unit is not UCUM")
        unit = code
    else:
        unit = q.get("unit")
    if unit is not None and not isinstance(unit, str):
        raise _Unusable("value", f"{label}valueQuantity unit is not a string")
    want = spec.unit
    if want == "%" and unit == "1":  # a fraction (input contract v2: ODI with unit 1)
        return float(Decimal(repr(number)) * 100)  # exact to the digits sent: 0.57 -> 57
    if want is None or want in SCORE_UNITS:
        if unit is None or unit in DIMENSIONLESS or unit == want:
            return number
    elif want == "d" and unit is not None and unit in TO_DAYS:
        return number * TO_DAYS[unit]
    elif unit == want:
        return number
    need = f"UCUM '{want}'" if want is not None else "no unit"
    if want == "d":
        need = "UCUM 'd' (or h, wk, mo, a)"
    shown = f"'{unit}'" if unit is not None else "none"
    raise _Unusable("value", f"{label}unit must be {need}; got {shown}")


def _got(key: str, raw: object) -> str:
    return f"{key} ({_json_type(raw)})" if key in ("valueBoolean", "valueInteger") else key


_SIDES: Final = (("left", LEFT), ("right", RIGHT))


# --- the reader's entry point (``read_bundle`` in ``_bundles.py`` calls it) ---------------------


def read_patient_facts(data: object, kb: KnowledgeBase, as_of: datetime | None,
                       strict_fhir: bool) -> PatientFacts:
    """``read_bundle`` (``_bundles.py``, which documents it)."""
    imap = _input_map(kb)
    if as_of is None:
        when = datetime.now(UTC)
    elif as_of.tzinfo is None or as_of.utcoffset() is None:
        when = as_of.replace(tzinfo=UTC)
    else:
        when = as_of
    try:
        return _Reader(imap, when, strict_fhir).read(data)
    except _Fatal as fatal:
        raise InvalidBundleError(fatal.issues) from None
    except Exception as exc:
        raise InvalidBundleError([InputIssue(
            "error", "exception",
            f"the input could not be processed ({type(exc).__name__})", None,
        )]) from exc
