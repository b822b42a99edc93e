"""Write the red-flag answer cases: one FHIR R4 Bundle per rule of "red-flag answers are
safety data" (docs/integrators/red-flag-answers.md), deterministically.

    python knowledge_base/scenarios/red-flag-answers/_generate.py            # rewrite
    python knowledge_base/scenarios/red-flag-answers/_generate.py --check    # exit 1 if stale

Each case is an entry of ``cases.yaml`` (next to this script) that says what it specifies,
or, where the case is made from the catalog (a stale YES for each of nine questions, the
undated screen of every question, an also-coded Condition), a small function below; what the
plan must say lives in ``../red-flag-answers.yaml`` (scenario ``answers-<name>``). The
people are built with the clinical vignettes' builder (``../vignettes/_generate.py``): an
ordinary patient with a good movement screen whose red-flag screen is current and "no"
except where the case says otherwise. Scenarios evaluate as of 2026-11-02T09:00:00Z.
"""

from __future__ import annotations

import functools
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
KB = _builder.KB
RED_FLAGS: tuple[str, ...] = red_flag_questions(_builder.KB)

AS_OF = "2026-11-02T09:00:00Z"
TODAY = "2026-11-02T08:30:00Z"  # asked again at this visit
YESTERDAY = "2026-11-01T09:05:00Z"
LAST_MONTH = "2026-10-01T10:00:00Z"  # 32 days before the as-of instant: stale (limit 14)
SIXTEEN_DAYS = "2026-10-17T10:00:00Z"
LONG_AGO = "2026-03-10T10:00:00Z"

CASES: dict[str, Callable[[], Any]] = {}
case: Callable[[Callable[[str], Any]], Callable[[str], Any]] = _builder.registry(CASES)


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
def undated_no_screen_counts_as_unanswered(name: str) -> Any:
    """Every red-flag question answered NO, but without dates: that is not a current
    screen; the caution names the questions as answered without a date."""
    b = person(name, omit=RED_FLAGS)
    for fact in RED_FLAGS:
        answer(b, fact, False, None, f"obs-{fact}-undated")
    return b


@case
def diabetes_type_2_code_counts(name: str) -> Any:
    """Type 2 diabetes (SNOMED 44054006, a code listed under also-coded) with fever: the
    infection pathway with a risk factor."""
    b = person(name, present=("rf-fever",))
    cond = b.condition("condition-diabetes", onset="2018-01-01")
    type_2 = next(c for c in KB.facts["condition-diabetes"].also_coded if c.code == "44054006")
    cond["code"]["coding"][0].update(code=type_2.code, display=type_2.display)
    return b


TIMES = {"today": TODAY, "yesterday": YESTERDAY, "last month": LAST_MONTH,
         "sixteen days": SIXTEEN_DAYS, "long ago": LONG_AGO}
SYSTEMS = {"SNOMED": SNOMED, "LOINC": LOINC}


def _raw(fields: dict[str, Any] | None) -> dict[str, Any] | None:
    if fields is not None and "coded" in fields:
        system, code, display = fields["coded"]
        return coded(SYSTEMS[system], code, display)
    return fields


def build(name: str, spec: dict[str, Any]) -> Any:
    """A case from its entry in cases.yaml."""
    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in spec.get("person", {}).items()}
    b = person(name, **kwargs)
    for fact, value, when, oid, *raw in spec.get("answers", []):
        answer(b, fact, value, TIMES.get(when, when), oid, _raw(raw[0] if raw else None))
    for fact, kwargs in spec.get("conditions", []):
        b.condition(fact, **kwargs)
    return b


for _name, _spec in _builder.load_data(HERE / "cases.yaml").items():
    assert _name not in CASES, _name
    CASES[_name] = functools.partial(build, _name, _spec)


def main(argv: list[str]) -> int:
    return int(_builder.sync(HERE, _builder.render(CASES, indent=1), argv, prune=True))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
