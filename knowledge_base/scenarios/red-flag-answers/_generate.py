"""Write the red-flag answer cases: one FHIR R4 Bundle per rule of "red-flag answers are
safety data" (docs/integrators/red-flag-answers.md), deterministically.

    python knowledge_base/scenarios/red-flag-answers/_generate.py            # rewrite
    python knowledge_base/scenarios/red-flag-answers/_generate.py --check    # exit 1 if stale

Each case is a small function whose docstring says what it specifies; what the plan must say
lives in ``../red-flag-answers.yaml`` (scenario ``answers-<name>``). The people are built
with the clinical vignettes' builder (``../vignettes/_generate.py``): an ordinary patient
with a good movement screen whose red-flag screen is current and "no" except where the case
says otherwise. Scenarios evaluate as of 2026-11-02T09:00:00Z.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location(
    "_vignette_builder", HERE.parent / "vignettes" / "_generate.py")
assert _spec is not None and _spec.loader is not None
_builder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_builder)  # (it puts the repository on sys.path)

from fhir_adapters import LOINC, SNOMED, concept, red_flag_questions  # noqa: E402

Vignette = _builder.Vignette
RED_FLAGS: tuple[str, ...] = red_flag_questions(_builder.KB)

AS_OF = "2026-11-02T09:00:00Z"
TODAY = "2026-11-02T08:30:00Z"  # asked again at this visit
YESTERDAY = "2026-11-01T09:05:00Z"
LAST_MONTH = "2026-10-01T10:00:00Z"  # 32 days before the as-of instant: stale (limit 14)
SIXTEEN_DAYS = "2026-10-17T10:00:00Z"
LONG_AGO = "2026-03-10T10:00:00Z"

CASES: dict[str, Callable[[], Any]] = {}
case = _builder.registry(CASES)


def person(name: str, *, birth_date: str = "1981-04-12", gender: str = "female",
           present: tuple[str, ...] = (), omit: tuple[str, ...] = (),
           when: str = YESTERDAY) -> Any:
    """An ordinary patient: current red-flag screen ("no" but ``present``, ``omit`` not
    asked here), moderate back pain of 10 weeks, a good movement screen."""
    b = Vignette(name, birth_date=birth_date, gender=gender)
    b.red_flags(*present, omit=omit, when=when)
    b.pain(4, odi=22.0, days=70.0, where="back-only")
    b.obs("myotome-strength", left=5, right=5)
    b.fms(squat=3, hurdle=(3, 3), lunge=(3, 3), aslr=(3, 3), pushup=3, rotary=(3, 3))
    return b


def answer(b: Any, fact: str, value: Any, when: str | None, oid: str,
           raw: dict[str, Any] | None = None) -> None:
    """One more answer to a red-flag question (``when`` None: undated)."""
    b.obs(fact, value, when=when, oid=oid, raw_value=raw)


def coded(system: str, code: str, display: str) -> dict[str, Any]:
    return {"valueCodeableConcept": concept(system, code, display)}


# --- a YES never expires silently --------------------------------------------------------

def _stale(fact: str) -> Callable[[str], Any]:
    def make(name: str) -> Any:
        b = person(name, omit=(fact,))
        answer(b, fact, True, LAST_MONTH, f"obs-{fact}-stale")
        return b
    return make


for _fact in ("rf-saddle-anaesthesia", "rf-bladder-dysfunction", "rf-bowel-dysfunction",
              "rf-foot-drop", "rf-progressive-weakness", "rf-fever", "rf-cancer-history",
              "rf-pulsatile-abdominal-mass", "rf-significant-trauma"):
    _name = f"stale-yes-{_fact.removeprefix('rf-')}"
    CASES[_name] = (lambda f, n: (lambda: _stale(f)(n)))(_fact, _name)


@case
def stale_yes_fever_with_iv_drug_use(name: str) -> Any:
    """Fever and IV drug use both reported YES 32 days ago, not asked since: the spinal
    infection emergency stands, worded as not re-assessed."""
    b = person(name, omit=("rf-fever", "rf-iv-drug-use"))
    answer(b, "rf-fever", True, LAST_MONTH, "obs-rf-fever-stale")
    answer(b, "rf-iv-drug-use", True, LAST_MONTH, "obs-rf-iv-drug-use-stale")
    return b


@case
def stale_yes_three_cauda_equina_items(name: str) -> Any:
    """The measured version-1 failure: saddle numbness, bladder dysfunction and bilateral
    leg symptoms answered YES 14 days and 1 second before the as-of instant."""
    items = ("rf-saddle-anaesthesia", "rf-bladder-dysfunction", "rf-bilateral-leg-symptoms")
    b = person(name, omit=items)
    for fact in items:
        answer(b, fact, True, "2026-10-19T08:59:59Z", f"obs-{fact}-stale")
    return b


# --- lifelong items ------------------------------------------------------------------------

@case
def lifelong_cancer_history_no_does_not_erase_yes(name: str) -> Any:
    """Cancer history YES in March, NO yesterday: a history cannot be undone; the
    malignancy alert stands and a caution names both answers."""
    b = person(name, omit=("rf-cancer-history",))
    answer(b, "rf-cancer-history", True, LONG_AGO, "obs-rf-cancer-history-march")
    answer(b, "rf-cancer-history", False, YESTERDAY, "obs-rf-cancer-history-now")
    return b


@case
def lifelong_cancer_history_yes_from_long_ago(name: str) -> Any:
    """Cancer history YES eight months ago and never asked again: it does not expire."""
    b = person(name, omit=("rf-cancer-history",))
    answer(b, "rf-cancer-history", True, LONG_AGO, "obs-rf-cancer-history-march")
    return b


# --- a later NO after a recent YES ---------------------------------------------------------

@case
def discordant_bladder_yes_yesterday_no_today(name: str) -> Any:
    """Bladder dysfunction YES yesterday, NO this morning: the NO is used, and a caution
    (never only information) names both answers and asks the clinician to confirm."""
    b = person(name, omit=("rf-bladder-dysfunction",))
    answer(b, "rf-bladder-dysfunction", True, YESTERDAY, "obs-rf-bladder-yes")
    answer(b, "rf-bladder-dysfunction", False, TODAY, "obs-rf-bladder-no")
    return b


@case
def old_yes_replaced_by_current_no(name: str) -> Any:
    """Night pain YES in March, NO yesterday: outside the discordance window the newer NO
    simply replaces the YES; no caution."""
    b = person(name, omit=("rf-night-pain",))
    answer(b, "rf-night-pain", True, LONG_AGO, "obs-rf-night-pain-march")
    answer(b, "rf-night-pain", False, YESTERDAY, "obs-rf-night-pain-now")
    return b


# --- undated answers -----------------------------------------------------------------------

@case
def undated_no_screen_counts_as_unanswered(name: str) -> Any:
    """Every red-flag question answered NO, but without dates: that is not a current
    screen; the caution names the questions as answered without a date."""
    b = person(name, omit=RED_FLAGS)
    for fact in RED_FLAGS:
        answer(b, fact, False, None, f"obs-{fact}-undated")
    return b


@case
def undated_yes_beats_stale_dated_no(name: str) -> Any:
    """Bowel dysfunction YES without a date and NO 32 days ago: the stale NO does not
    count, so the undated YES escalates, worded "date unknown"."""
    b = person(name, omit=("rf-bowel-dysfunction",))
    answer(b, "rf-bowel-dysfunction", True, None, "obs-rf-bowel-undated-yes")
    answer(b, "rf-bowel-dysfunction", False, LAST_MONTH, "obs-rf-bowel-old-no")
    return b


@case
def undated_yes_with_current_no(name: str) -> Any:
    """Saddle numbness YES without a date and NO yesterday: the dated NO is used, and the
    pair is a contradiction the caution names."""
    b = person(name, omit=("rf-saddle-anaesthesia",))
    answer(b, "rf-saddle-anaesthesia", True, None, "obs-rf-saddle-undated-yes")
    answer(b, "rf-saddle-anaesthesia", False, YESTERDAY, "obs-rf-saddle-no")
    return b


# --- encodings -------------------------------------------------------------------------------

@case
def snomed_yes_is_read(name: str) -> Any:
    """Bladder dysfunction answered with SNOMED 373066001 (Yes): read as yes."""
    b = person(name, omit=("rf-bladder-dysfunction",))
    answer(b, "rf-bladder-dysfunction", None, YESTERDAY, "obs-rf-bladder-snomed",
           coded(SNOMED, "373066001", "Yes"))
    return b


@case
def loinc_yes_is_read(name: str) -> Any:
    """Foot drop answered with LOINC LA33-6 (Yes): read as yes."""
    b = person(name, omit=("rf-foot-drop",))
    answer(b, "rf-foot-drop", None, YESTERDAY, "obs-rf-foot-drop-loinc",
           coded(LOINC, "LA33-6", "Yes"))
    return b


@case
def loinc_no_is_read(name: str) -> Any:
    """Fever answered with LOINC LA32-8 (No): read as no; the screen is complete."""
    b = person(name, omit=("rf-fever",))
    answer(b, "rf-fever", None, YESTERDAY, "obs-rf-fever-loinc", coded(LOINC, "LA32-8", "No"))
    return b


@case
def unreadable_text_answer_holds_exercise(name: str) -> Any:
    """Saddle numbness answered as free text ("yes"): received but unreadable; a cauda
    equina item, so exercise is held until a readable answer exists."""
    b = person(name, omit=("rf-saddle-anaesthesia",))
    answer(b, "rf-saddle-anaesthesia", None, YESTERDAY, "obs-rf-saddle-text",
           {"valueString": "yes"})
    return b


@case
def unreadable_concept_text_holds_exercise(name: str) -> Any:
    """Bowel dysfunction answered with a CodeableConcept that has only text: unreadable,
    held."""
    b = person(name, omit=("rf-bowel-dysfunction",))
    answer(b, "rf-bowel-dysfunction", None, YESTERDAY, "obs-rf-bowel-text",
           {"valueCodeableConcept": {"text": "Yes"}})
    return b


@case
def unreadable_component_only_holds_exercise(name: str) -> Any:
    """Progressive weakness sent only in a component: unreadable, held."""
    b = person(name, omit=("rf-progressive-weakness",))
    answer(b, "rf-progressive-weakness", None, YESTERDAY, "obs-rf-weakness-component",
           {"component": [{"code": {"text": "answer"}, "valueBoolean": True}]})
    return b


@case
def unreadable_night_pain_is_a_caution(name: str) -> Any:
    """Night pain sent as an integer: unreadable, a caution in words distinct from "not
    asked"; not a cauda equina or motor item, so exercise goes on."""
    b = person(name, omit=("rf-night-pain",))
    answer(b, "rf-night-pain", None, YESTERDAY, "obs-rf-night-pain-int", {"valueInteger": 1})
    return b


@case
def unreadable_answer_replaced_by_a_newer_readable_one(name: str) -> Any:
    """Bladder answered as text yesterday, then NO this morning: the readable answer
    replaces it; nothing is held."""
    b = person(name, omit=("rf-bladder-dysfunction",))
    answer(b, "rf-bladder-dysfunction", None, YESTERDAY, "obs-rf-bladder-text",
           {"valueString": "not sure"})
    answer(b, "rf-bladder-dysfunction", False, TODAY, "obs-rf-bladder-no")
    return b


# --- clock skew ------------------------------------------------------------------------------

@case
def answer_five_minutes_after_as_of_counts(name: str) -> Any:
    """Bladder dysfunction YES recorded 5 minutes after the as-of instant (EHR clock ahead
    of the service's): within the tolerance, so it counts."""
    b = person(name, omit=("rf-bladder-dysfunction",))
    answer(b, "rf-bladder-dysfunction", True, "2026-11-02T09:05:00Z", "obs-rf-bladder-skew")
    return b


@case
def answer_an_hour_after_as_of_is_ignored(name: str) -> Any:
    """Bladder dysfunction YES recorded an hour after the as-of instant: beyond the
    tolerance, reported and ignored (the question counts as unanswered)."""
    b = person(name, omit=("rf-bladder-dysfunction",))
    answer(b, "rf-bladder-dysfunction", True, "2026-11-02T10:00:00Z", "obs-rf-bladder-late")
    return b


# --- age at a threshold, Conditions ------------------------------------------------------------

@case
def year_only_birth_date_uses_oldest_age(name: str) -> Any:
    """A man born in 1965 (year only), evaluated on 2 Nov 2026: 60 or 61. The aneurysm
    risk profile (age over 60) uses the oldest possible age, and the plan says so."""
    b = person(name, birth_date="1965", gender="male", omit=("rf-pulsatile-abdominal-mass",))
    return b


@case
def cancer_in_remission_is_a_history(name: str) -> Any:
    """Breast cancer recorded as in remission, cancer-history question not asked: a
    history of cancer with back pain."""
    b = person(name, omit=("rf-cancer-history",))
    b.condition("condition-cancer", onset="2019-03-01", clinical="remission")
    return b


@case
def hiv_with_fever_is_an_infection_emergency(name: str) -> Any:
    """HIV disease on the problem list and fever answered YES: fever with an
    immunosuppression-type risk factor."""
    b = person(name, present=("rf-fever",))
    b.condition("condition-hiv", onset="2015-06-01")
    return b


@case
def diabetes_type_2_code_counts(name: str) -> Any:
    """Type 2 diabetes (SNOMED 44054006, a code listed under also-coded) with fever: the
    infection pathway with a risk factor."""
    b = person(name, present=("rf-fever",))
    cond = b.condition("condition-diabetes", onset="2018-01-01")
    cond["code"]["coding"][0].update(code="44054006", display="Diabetes mellitus type 2")
    return b


def main(argv: list[str]) -> int:
    return int(_builder.sync(HERE, _builder.render(CASES, indent=1), argv, prune=True))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
