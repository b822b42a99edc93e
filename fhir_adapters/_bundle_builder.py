"""One builder of FHIR R4 *input* (plain dicts): Patients, Observations, Conditions,
red-flag answers, QuestionnaireResponses and Bundles, in the shapes the input contract
reads (docs/integrators/input.md).

Every generator of input uses it: the examples (``examples/_generate.py``), the scenario
generators under ``knowledge_base/scenarios/`` (vignettes, red-flag answers, questionnaire
responses), the tests' ``tests/fhir_factory.py`` and the synthetic populations
(``_population``, ``_bulk_synth``). Two layers:

* **shapes** (no knowledge base): ``coding``, ``concept``, ``value_x``, ``quantity``,
  ``side_component``, ``provoked_component``, ``observation``, ``condition``, ``patient``,
  ``questionnaire_response`` and ``bundle``. The populations, whose codes are the input
  contract's own table (checked against the bundled catalog by the tests), use these.
* **from the fact catalog**: ``fact_code``, ``fact_value``, ``red_flag_questions``,
  ``questionnaire_item`` and ``BundleBuilder`` (one patient's Bundle from fact names and
  values). Each code, system, display, unit and value type is the knowledge base's; the
  red-flag screen is the catalog's red-flag items, in catalog order. A fact the catalog does
  not define (or defines without an input code), or a value of another type than the
  catalog's, raises ``FactCatalogError``: the generator and the knowledge base disagree.

Nothing here is random or dated by the clock: the same calls give the same dicts, key order
included (the generated files are compared byte for byte).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

from fhir_adapters._errors import FactCatalogError

# the codes the reader reads them by, and every URI from the terminology module
from fhir_adapters._inbound import (
    EXERCISE_COMPONENT,
    FOLLOW_UP_PREFIX,
    LBP_PROVOKED,
    LEFT,
    RIGHT,
)
from fhir_adapters._terminology import (
    CLINICAL_STATUS,
    CONDITION_CATEGORY,
    EXAMPLE_MRN,
    EXERCISE_SYSTEM,
    LOINC,
    OBSERVATION_CATEGORY,
    QUESTIONNAIRE_BASE,
    SCREEN_SYSTEM,
    SNOMED,
    STARTBACK_PANEL,
    UCUM,
    VERIFICATION_STATUS,
)

if TYPE_CHECKING:
    from cds import KnowledgeBase
    from cds.authoring import FactDefinition

__all__ = [
    "CLINICAL_STATUS",
    "EXERCISE_SYSTEM",
    "LOINC",
    "SCREEN_SYSTEM",
    "SNOMED",
    "STARTBACK_PANEL",
    "UCUM",
    "VERIFICATION_STATUS",
    "BundleBuilder",
    "FactCatalogError",
    "Kind",
    "bundle",
    "coding",
    "concept",
    "condition",
    "exercise_response",
    "fact_code",
    "fact_value",
    "kind_of",
    "observation",
    "patient",
    "provoked_component",
    "quantity",
    "questionnaire_item",
    "questionnaire_response",
    "red_flag_questions",
    "side_component",
    "value_x",
]

Kind = Literal["boolean", "integer", "decimal", "code"]

#: Displays the examples and vignettes write on the component codes.
SIDE_DISPLAY: Final = {"left": "Left", "right": "Right"}
PROVOKED_DISPLAY: Final = "Test reproduced or increased low back pain"
#: Facts whose Observation is a "survey" (asked) rather than an "exam" (examined).
SURVEY_PREFIXES: Final = ("rf-", "startback-", "phq2-", "odi-", "pain-", "episode-")
#: When the builder dates an Observation, and the red-flag screen, unless told otherwise.
OBSERVED: Final = "2026-11-01T09:30:00Z"
RED_FLAGS_ASKED: Final = "2026-11-01T09:05:00Z"
SCREENED: Final = "2026-11-01T10:00:00Z"  # the movement screen


# --- shapes ------------------------------------------------------------------------------------

def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display is not None:
        out["display"] = display
    return out


def concept(system: str, code: str, display: str | None = None, *,
            text: str | None = None) -> dict[str, Any]:
    """A CodeableConcept of one coding (and ``text`` when given)."""
    out: dict[str, Any] = {"coding": [coding(system, code, display)]}
    if text is not None:
        out["text"] = text
    return out


def quantity(value: Any, unit: str | None) -> dict[str, Any]:
    """A ``valueQuantity`` in UCUM (``unit`` None: the bare value)."""
    q: dict[str, Any] = {"value": value}
    if unit is not None:
        q.update(unit=unit, system=UCUM, code=unit)
    return {"valueQuantity": q}


def value_x(kind: Kind, value: Any, unit: str | None = None) -> dict[str, Any]:
    """The ``value[x]`` the input contract reads for a fact of type ``kind``: valueBoolean,
    valueInteger, valueQuantity (decimal, in ``unit``) or valueCodeableConcept (a code of the
    screen system)."""
    if kind == "boolean":
        return {"valueBoolean": value}
    if kind == "code":
        return {"valueCodeableConcept": concept(SCREEN_SYSTEM, value)}
    if kind == "integer":
        return {"valueInteger": value}
    return quantity(value, unit)


_KINDS: Final[tuple[tuple[type, Kind], ...]] = (
    (bool, "boolean"), (int, "integer"), (float, "decimal"), (str, "code"))


def kind_of(value: Any) -> Kind:
    """The fact type a Python value stands for (bool, int, float, str)."""
    kind = next((k for t, k in _KINDS if isinstance(value, t)), None)
    if kind is None:
        raise TypeError(f"no FHIR value[x] for {type(value).__name__} {value!r}")
    return kind


def side_component(side: str, fields: dict[str, Any], *,
                   display: bool = False) -> dict[str, Any]:
    """A component for one side (``left`` or ``right``) of a bilateral test (SNOMED)."""
    system, code = {"left": LEFT, "right": RIGHT}[side]
    return {"code": concept(system, code, SIDE_DISPLAY[side] if display else None), **fields}


def provoked_component(value: bool, *, display: bool = False) -> dict[str, Any]:
    """The ``screen#lbp-provoked`` component: the test reproduced or increased LBP."""
    system, code = LBP_PROVOKED
    return {"code": concept(system, code, PROVOKED_DISPLAY if display else None),
            "valueBoolean": value}


def _resource(resource_type: str, **fields: Any) -> dict[str, Any]:
    """A resource with the fields that are not None, in the order given."""
    return {"resourceType": resource_type, **{k: v for k, v in fields.items() if v is not None}}


def _reference(subject: str | dict[str, str] | None) -> dict[str, str] | None:
    return {"reference": subject} if isinstance(subject, str) else subject


def _status(system: str, code: str | None) -> dict[str, Any] | None:
    return None if code is None else concept(system, code)


def observation(code: dict[str, Any], *, oid: str | None = None, status: str = "final",
                category: str | None = None, subject: str | dict[str, str] | None = None,
                when: str | None = None, value: dict[str, Any] | None = None,
                components: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """An Observation: ``code`` a CodeableConcept, ``value`` its value[x] (or any raw fields),
    ``subject`` a reference (text or dict), ``when`` its effectiveDateTime."""
    res = _resource("Observation", id=oid, status=status,
                    category=None if category is None else [
                        concept(OBSERVATION_CATEGORY, category)],
                    code=code, subject=_reference(subject), effectiveDateTime=when)
    res.update(value or {})
    if components:
        res["component"] = list(components)
    return res


def exercise_response(item: str, value: dict[str, Any], exercise: str, *, oid: str,
                      subject: dict[str, str], when: str, category: str | None = None,
                      display: str | None = None, title: str | None = None) -> dict[str, Any]:
    """A follow-up response (docs/integrators/follow-up.md): ``screen#exercise-<item>`` with
    a component naming the exercise of the previous plan it is about (``title``: with
    displays and text)."""
    system, code = EXERCISE_COMPONENT
    about = {"code": concept(system, code, "Exercise" if title else None),
             "valueCodeableConcept": concept(EXERCISE_SYSTEM, exercise, title, text=title)}
    return observation(concept(SCREEN_SYSTEM, f"{FOLLOW_UP_PREFIX}{item}", display), oid=oid,
                       category=category, subject=subject, when=when, value=value,
                       components=[about])


def condition(code: dict[str, Any], *, cid: str | None, clinical: str | None = None,
              verification: str | None = None, problem_list: bool = False,
              subject: str | None = None, onset: str | None = None,
              recorded: str | None = None) -> dict[str, Any]:
    """A Condition (statuses from the HL7 condition-clinical/-ver-status systems)."""
    return _resource(
        "Condition", id=cid, clinicalStatus=_status(CLINICAL_STATUS, clinical),
        verificationStatus=_status(VERIFICATION_STATUS, verification),
        category=[concept(CONDITION_CATEGORY, "problem-list-item")] if problem_list else None,
        code=code, subject=_reference(subject), onsetDateTime=onset, recordedDate=recorded)


def patient(pid: str | None, *, mrn: str | None = None, family: str | None = None,
            given: str | None = None, gender: str | None = None,
            birth_date: str | None = None) -> dict[str, Any]:
    """A Patient; ``mrn`` becomes an identifier in the examples' record-number system."""
    named = family is not None or given is not None
    return _resource(
        "Patient", id=pid,
        identifier=None if mrn is None else [{"system": EXAMPLE_MRN, "value": mrn}],
        name=[{"family": family, "given": [given]}] if named else None,
        gender=gender, birthDate=birth_date)


def questionnaire_response(rid: str, items: list[dict[str, Any]], *,
                           subject: dict[str, Any], authored: str | None,
                           status: str = "completed",
                           questionnaire: str = "red-flag-screen") -> dict[str, Any]:
    """A QuestionnaireResponse to one of the Questionnaires ``kb export-fhir`` publishes."""
    res: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse", "id": rid,
        "questionnaire": f"{QUESTIONNAIRE_BASE}/{questionnaire}", "status": status,
        "subject": subject, "item": items,
    }
    if authored is not None:
        res["authored"] = authored
    return res


def bundle(resources: Iterable[dict[str, Any]], *, namespace: uuid.UUID | None = None,
           key_prefix: str = "", bundle_id: str | None = None, type: str = "collection",
           timestamp: str | None = None) -> dict[str, Any]:
    """A Bundle of the resources. With a ``namespace``, each entry's fullUrl is the
    ``urn:uuid`` (version 5) of ``key_prefix + "<type>/<id>"``, so it never changes."""
    entries = []
    for r in resources:
        entry: dict[str, Any] = {}
        if namespace is not None:
            key = f"{key_prefix}{r['resourceType']}/{r.get('id')}"
            entry["fullUrl"] = f"urn:uuid:{uuid.uuid5(namespace, key)}"
        entry["resource"] = r
        entries.append(entry)
    out: dict[str, Any] = {"resourceType": "Bundle"}
    if bundle_id is not None:
        out["id"] = bundle_id
    out["type"] = type
    if timestamp is not None:
        out["timestamp"] = timestamp
    out["entry"] = entries
    return out





# --- from the fact catalog -------------------------------------------------------------------

def catalog_fact(kb: KnowledgeBase, fact: str) -> FactDefinition:
    """The catalog's definition of an input fact (one with a code)."""
    d = kb.facts.get(fact)
    if d is None:
        raise FactCatalogError(
            f"fact {fact!r} is not in the fact catalog of knowledge base {kb.manifest.id}")
    if d.coding is None:
        raise FactCatalogError(f"fact {fact!r} has no input code in the fact catalog")
    return d


def fact_code(kb: KnowledgeBase, fact: str, *, display: bool = True) -> dict[str, Any]:
    """The CodeableConcept that carries ``fact`` (system, code and display of the catalog)."""
    c = catalog_fact(kb, fact).coding
    assert c is not None
    return concept(c.system, c.code, c.display if display else None)


def _fits(d: FactDefinition, value: Any) -> bool:
    if d.type == "code":
        return isinstance(value, str) and (d.codes is None or value in d.codes)
    if d.type == "decimal":
        return kind_of(value) in ("integer", "decimal")
    return kind_of(value) == d.type


def fact_value(kb: KnowledgeBase, fact: str, value: Any, *,
               strict: bool = True) -> dict[str, Any]:
    """The value[x] of ``fact``. ``strict``: the catalog's type and unit, and a value that is
    not of that type (or a code the catalog does not list) raises ``FactCatalogError``.
    Not strict (tests that send a mismatched type on purpose): the value's own Python type,
    with the catalog's unit for a float."""
    if not strict:
        d = kb.facts.get(fact)
        return value_x(kind_of(value), value, d.unit if d is not None else None)
    d = catalog_fact(kb, fact)
    if not _fits(d, value):
        raise FactCatalogError(
            f"fact {fact!r} is of type {d.type} in the fact catalog"
            + (f" (codes {', '.join(d.codes)})" if d.codes else "") + f"; {value!r} is not")
    return value_x(d.type, value, d.unit)


def red_flag_questions(kb: KnowledgeBase) -> tuple[str, ...]:
    """The red-flag screen: every input fact the catalog classes ``red-flag: specific|weak``,
    in catalog order."""
    names = tuple(n for n, d in kb.facts.items()
                  if d.red_flag is not None and not d.derived and d.coding is not None)
    if not names:
        raise FactCatalogError(
            f"the fact catalog of knowledge base {kb.manifest.id} classes no red-flag item")
    return names


def questionnaire_item(kb: KnowledgeBase, fact: str, *answers: dict[str, Any]) -> dict[str, Any]:
    """One question as the published Questionnaire asks it (linkId = the fact's name)."""
    return {"linkId": fact, "text": catalog_fact(kb, fact).question,
            **({"answer": list(answers)} if answers else {})}


class BundleBuilder:
    """The resources of one patient's Bundle, made from fact names and values.

    ``BundleBuilder(kb, patient(...), bundle_id=..., namespace=..., key_prefix=...)``;
    ``obs(fact, value, left=, right=, provoked=)`` adds an Observation coded, typed and
    dated as the catalog and the contract say (categories ``survey`` for asked items);
    ``red_flags(*present, omit=)`` the whole red-flag screen of the catalog; ``condition``,
    ``questionnaire_response``; ``bundle()`` the Bundle (fullUrls from ``namespace``).
    """

    def __init__(self, kb: KnowledgeBase, patient_resource: dict[str, Any], *, bundle_id: str,
                 namespace: uuid.UUID, key_prefix: str, timestamp: str,
                 survey: tuple[str, ...] = SURVEY_PREFIXES) -> None:
        self.kb = kb
        self.patient_id: str = patient_resource["id"]
        self.subject = {"reference": f"Patient/{self.patient_id}"}
        self.resources: list[dict[str, Any]] = [patient_resource]
        self.bundle_id, self.namespace, self.key_prefix = bundle_id, namespace, key_prefix
        self.timestamp = timestamp
        self.survey = survey
        self.red_flag_questions = red_flag_questions(kb)
        self._ids: set[str] = set()

    def add(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Adds a resource (ids are unique within the Bundle)."""
        if resource["id"] in self._ids:
            raise ValueError(f"{self.bundle_id}: a second resource with id {resource['id']}")
        self._ids.add(resource["id"])
        self.resources.append(resource)
        return resource

    def obs(self, fact: str, value: Any = None, *, when: str | None = OBSERVED,
            status: str = "final", left: Any = None, right: Any = None,
            provoked: bool | None = None, oid: str | None = None,
            raw_value: dict[str, Any] | None = None,
            subject: str | None = None) -> dict[str, Any]:
        """One Observation of a catalog fact; ``left``/``right`` become laterality
        components, ``provoked`` the ``lbp-provoked`` component, ``raw_value`` any fields
        sent instead of the value (``when`` None: undated); ``subject`` another patient's
        reference (an Observation filed against the wrong patient)."""
        sides = [side_component(side, fact_value(self.kb, fact, v), display=True)
                 for side, v in (("left", left), ("right", right)) if v is not None]
        if provoked is not None:
            sides.append(provoked_component(provoked, display=True))
        value_fields = raw_value if raw_value is not None else (
            fact_value(self.kb, fact, value) if value is not None else None)
        return self.add(observation(
            fact_code(self.kb, fact), oid=oid or f"obs-{fact}", status=status,
            category="survey" if fact.startswith(self.survey) else "exam",
            subject=subject or self.subject, when=when, value=value_fields, components=sides))

    def red_flags(self, *present: str, omit: Iterable[str] = (),
                  when: str = RED_FLAGS_ASKED) -> None:
        """The catalog's red-flag screen: ``present`` answered yes, the rest no, ``omit`` not
        asked. A name that is not a red-flag question of the catalog raises."""
        omit = tuple(omit)
        unknown = (set(present) | set(omit)) - set(self.red_flag_questions)
        if unknown:
            raise FactCatalogError(
                f"not red-flag questions of the fact catalog: {', '.join(sorted(unknown))}")
        for rf in self.red_flag_questions:
            if rf not in omit:
                self.obs(rf, rf in present, when=when)

    def movement_screen(self, *, squat: int = 2, hurdle: tuple[int, int] = (2, 2),
                        lunge: tuple[int, int] = (2, 2), shoulder: tuple[int, int] = (3, 3),
                        aslr: tuple[int, int] = (2, 2), pushup: int = 2,
                        rotary: tuple[int, int] = (2, 2), when: str = SCREENED) -> None:
        """The seven tests of the functional movement screen, scored per side where the
        catalog says the test is bilateral; none increased the low back pain."""
        scores: dict[str, Any] = {
            "fms-deep-squat": squat, "fms-hurdle-step": hurdle, "fms-inline-lunge": lunge,
            "fms-shoulder-mobility": shoulder, "fms-active-slr": aslr,
            "fms-trunk-stability-pushup": pushup, "fms-rotary-stability": rotary}
        for fact, score in scores.items():
            lbp = None if fact == "fms-shoulder-mobility" else False  # no LBP component
            if isinstance(score, tuple):
                self.obs(fact, left=score[0], right=score[1], when=when, provoked=lbp)
            else:
                self.obs(fact, score, when=when, provoked=lbp)

    def condition(self, fact: str, *, onset: str, cid: str | None = None,
                  clinical: str = "active", verification: str = "confirmed",
                  recorded: str | None = None) -> dict[str, Any]:
        """A problem-list Condition coded as the catalog's ``condition-*`` fact."""
        return self.add(condition(
            fact_code(self.kb, fact), cid=cid or f"cond-{fact.removeprefix('condition-')}",
            clinical=clinical, verification=verification, problem_list=True,
            subject=self.subject["reference"], onset=onset, recorded=recorded))

    def questionnaire_response(self, rid: str, items: list[dict[str, Any]], *,
                               authored: str | None, status: str = "completed",
                               questionnaire: str = "red-flag-screen",
                               subject: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.add(questionnaire_response(
            rid, items, subject=subject or self.subject, authored=authored, status=status,
            questionnaire=questionnaire))

    def apply(self, steps: Iterable[Mapping[str, Any]],
              names: Mapping[str, Any] | None = None) -> None:
        """Calls of this builder's methods written as data (the generators' YAML files):
        each step is ``{method: [positional..., {keyword: value}]}``, ``{method: {keyword:
        value}}`` or ``{method: value}``; lists become tuples, and a string that is a key of
        ``names`` its value (named times)."""
        def value(v: Any) -> Any:
            if isinstance(v, list):
                return tuple(v)
            return (names or {}).get(v, v) if isinstance(v, str) else v

        for step in steps:
            ((method, spec),) = step.items()
            if method.startswith("_") or not callable(getattr(self, method, None)):
                raise ValueError(f"{self.bundle_id}: no builder step {method!r}")
            args = spec if isinstance(spec, list) else [] if isinstance(spec, dict) else [spec]
            kwargs = spec if isinstance(spec, dict) else {}
            if args and isinstance(args[-1], dict):
                args, kwargs = args[:-1], args[-1]
            getattr(self, method)(*map(value, args), **{k: value(v) for k, v in kwargs.items()})

    def bundle(self) -> dict[str, Any]:
        return bundle(self.resources, namespace=self.namespace, key_prefix=self.key_prefix,
                      bundle_id=self.bundle_id, timestamp=self.timestamp)
