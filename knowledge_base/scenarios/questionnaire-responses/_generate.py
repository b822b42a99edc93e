"""Write the QuestionnaireResponse cases: the red-flag screen and STarT Back sent as
questionnaires, read with the same rules as Observations (docs/integrators/input.md,
"QuestionnaireResponse"), deterministically.

    python knowledge_base/scenarios/questionnaire-responses/_generate.py          # rewrite
    python knowledge_base/scenarios/questionnaire-responses/_generate.py --check  # 1 if stale

Each case is a small function whose docstring says what it specifies; what the plan must say
lives in ``../questionnaire-responses.yaml`` (scenario ``qr-<name>``). The people are the
red-flag answer cases' ordinary patient (moderate back pain of 10 weeks, a good movement
screen) whose red-flag screen comes as a QuestionnaireResponse (linkId = the fact's name)
instead of Observations. Scenarios evaluate as of
2026-11-02T09:00:00Z.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location(
    "_red_flag_cases", HERE.parent / "red-flag-answers" / "_generate.py")
assert _spec is not None and _spec.loader is not None
_cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cases)
_builder = _cases._builder  # the vignettes' script: the registry and the file writer

from fhir_adapters import LOINC, SNOMED, STARTBACK_PANEL, questionnaire_item  # noqa: E402

person = _cases.person
RED_FLAGS: tuple[str, ...] = _cases.RED_FLAGS
KB = _builder.KB

TODAY = "2026-11-02T08:30:00Z"
YESTERDAY = "2026-11-01T09:05:00Z"
LAST_MONTH = "2026-10-01T10:00:00Z"  # 32 days before the as-of instant: stale (limit 14)
LONG_AGO = "2026-03-10T10:00:00Z"

CASES: dict[str, Callable[[], Any]] = {}
case: Callable[[Callable[[str], Any]], Callable[[str], Any]] = _builder.registry(CASES)


def item(fact: str, *answers: dict[str, Any]) -> dict[str, Any]:
    """One question, as the published Questionnaire asks it (linkId = the fact's name)."""
    return questionnaire_item(KB, fact, *answers)


def yes_no(value: bool) -> dict[str, Any]:
    return {"valueBoolean": value}


def response(b: Any, rid: str, items: list[dict[str, Any]], *, authored: str | None,
             status: str = "completed", questionnaire: str = "red-flag-screen",
             subject: dict[str, Any] | None = None) -> dict[str, Any]:
    added: dict[str, Any] = b.questionnaire_response(
        rid, items, authored=authored, status=status, questionnaire=questionnaire,
        subject=subject)
    return added


def screen(present: tuple[str, ...] = (), omit: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The red-flag screen as questionnaire items: ``present`` yes, ``omit`` not asked."""
    return [item(rf, yes_no(rf in present)) for rf in RED_FLAGS if rf not in omit]


def qr_person(name: str) -> Any:
    """The ordinary patient without any red-flag Observation (the screen comes as a QR)."""
    return person(name, omit=RED_FLAGS)


# --- the screen as a questionnaire ------------------------------------------------------------

@case
def bladder_yes_is_an_emergency(name: str) -> Any:
    """The whole red-flag screen as one completed QuestionnaireResponse, bladder YES: the
    same cauda equina emergency as the Observation."""
    b = qr_person(name)
    response(b, "qr-screen", screen(present=("rf-bladder-dysfunction",)), authored=YESTERDAY)
    return b


@case
def all_no_is_a_complete_screen(name: str) -> Any:
    """Every red-flag question answered NO in a completed questionnaire: no red-flag alert
    and no unanswered-questions caution; exercise is proposed."""
    b = qr_person(name)
    response(b, "qr-screen", screen(), authored=YESTERDAY)
    return b


@case
def stale_yes_still_counts(name: str) -> Any:
    """Saddle numbness YES in a questionnaire 32 days ago, not asked since (today's screen
    omits it): a YES never expires silently."""
    b = qr_person(name)
    response(b, "qr-old", [item("rf-saddle-anaesthesia", yes_no(True))], authored=LAST_MONTH)
    response(b, "qr-screen", screen(omit=("rf-saddle-anaesthesia",)), authored=TODAY)
    return b


@case
def yes_in_a_nested_item_counts(name: str) -> Any:
    """A YES inside a group, and another nested under an answer: both are read."""
    b = qr_person(name)
    items = screen(omit=("rf-foot-drop", "rf-progressive-weakness"))
    nested = {"linkId": "motor", "text": "Leg strength",
              "item": [{"linkId": "walking", "text": "Any change in walking?",
                        "answer": [{"valueBoolean": True,
                                    "item": [item("rf-foot-drop", yes_no(True))]}]},
                       item("rf-progressive-weakness", yes_no(False))]}
    response(b, "qr-screen", [{"linkId": "cauda-equina", "item": items[:6]}, nested,
                              *items[6:]], authored=YESTERDAY)
    return b


@case
def in_progress_yes_is_read(name: str) -> Any:
    """A questionnaire left in progress with fever YES: read (as preliminary, reported),
    never dropped; the infection pathway fires."""
    b = qr_person(name)
    response(b, "qr-screen", screen(present=("rf-fever",)), authored=YESTERDAY,
             status="in-progress")
    return b


@case
def entered_in_error_is_ignored(name: str) -> Any:
    """A questionnaire entered in error (bladder YES) is ignored and reported; the
    completed one (all NO) is used."""
    b = qr_person(name)
    response(b, "qr-wrong", screen(present=("rf-bladder-dysfunction",)), authored=TODAY,
             status="entered-in-error")
    response(b, "qr-screen", screen(), authored=YESTERDAY)
    return b


@case
def unreadable_answer_holds_exercise(name: str) -> Any:
    """Saddle numbness answered with free text: received but could not be read; a cauda
    equina item, so exercise is held until a readable answer exists."""
    b = qr_person(name)
    items = screen(omit=("rf-saddle-anaesthesia",))
    items.insert(0, item("rf-saddle-anaesthesia", {"valueString": "a bit, sometimes"}))
    response(b, "qr-screen", items, authored=YESTERDAY)
    return b


@case
def snomed_coded_yes_is_read(name: str) -> Any:
    """Bladder answered with the SNOMED Yes code (valueCoding): read as YES."""
    b = qr_person(name)
    items = screen(omit=("rf-bladder-dysfunction",))
    items.append(item("rf-bladder-dysfunction",
                      {"valueCoding": {"system": SNOMED, "code": "373066001",
                                       "display": "Yes"}}))
    response(b, "qr-screen", items, authored=YESTERDAY)
    return b


@case
def undated_no_screen_is_unanswered(name: str) -> Any:
    """A questionnaire without ``authored``, all NO: an undated NO cannot be shown to be
    current, so the core questions count as unanswered."""
    b = qr_person(name)
    response(b, "qr-screen", screen(), authored=None)
    return b


@case
def lifelong_no_does_not_erase_yes(name: str) -> Any:
    """Cancer history YES in a questionnaire in March, NO in yesterday's: a history cannot
    be undone; the malignancy alert stands and a caution names both answers."""
    b = qr_person(name)
    response(b, "qr-march", [item("rf-cancer-history", yes_no(True))], authored=LONG_AGO)
    response(b, "qr-screen", screen(), authored=YESTERDAY)
    return b


# --- questionnaire and Observation together: the newer answer, the same discordance rules ----

@case
def observation_no_after_questionnaire_yes(name: str) -> Any:
    """Bladder YES in yesterday's questionnaire, NO as an Observation today: the NO is used
    and a caution names both answers (a NO after a recent YES)."""
    b = qr_person(name)
    response(b, "qr-screen", screen(present=("rf-bladder-dysfunction",)), authored=YESTERDAY)
    b.obs("rf-bladder-dysfunction", False, when=TODAY, oid="obs-bladder-today")
    return b


@case
def questionnaire_yes_after_observation_no(name: str) -> Any:
    """Bladder NO as an Observation yesterday, then YES in today's questionnaire: the
    newer YES wins, the emergency stands."""
    b = qr_person(name)
    b.obs("rf-bladder-dysfunction", False, when=YESTERDAY, oid="obs-bladder-yesterday")
    response(b, "qr-screen", screen(present=("rf-bladder-dysfunction",)), authored=TODAY)
    return b


# --- STarT Back ----------------------------------------------------------------------------

# the LOINC codes of the nine items, as the fact catalog lists them (also-coded)
_STARTBACK_LOINC = tuple(next(c.code for c in KB.facts[f"startback-item-{i}"].also_coded
                              if c.system == LOINC) for i in range(1, 10))
_PANEL = STARTBACK_PANEL["code"]


@case
def startback_loinc_items_high_risk(name: str) -> Any:
    """STarT Back as a LOINC-coded questionnaire (panel 91349-1, items 91340-0 ... 91348-3,
    linkIds as a LOINC form names them): 8 of 9 agree, 5 of the distress items: high risk."""
    b = qr_person(name)
    response(b, "qr-screen", screen(), authored=YESTERDAY)
    agree = (1, 2, 3, 5, 6, 7, 8, 9)
    items = [{"linkId": f"/{_PANEL}/{code}", "answer": [{"valueBoolean": i in agree}]}
             for i, code in enumerate(_STARTBACK_LOINC, start=1)]
    response(b, "qr-startback", [{"linkId": f"/{_PANEL}", "item": items}], authored=YESTERDAY,
             questionnaire="startback")
    return b


@case
def startback_by_link_id_low_risk(name: str) -> Any:
    """STarT Back as the published questionnaire (linkId startback-item-N), 2 of 9 agree:
    low risk."""
    b = qr_person(name)
    response(b, "qr-screen", screen(), authored=YESTERDAY)
    items = [item(f"startback-item-{i}", yes_no(i in (1, 2))) for i in range(1, 10)]
    response(b, "qr-startback", items, authored=YESTERDAY, questionnaire="startback")
    return b


def main(argv: list[str]) -> int:
    return int(_builder.sync(HERE, _builder.render(CASES, indent=1), argv, prune=True))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
