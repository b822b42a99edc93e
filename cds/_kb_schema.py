"""The knowledge-base file format, v1, as pydantic models.

Rule authors write YAML; these models are the single definition of what is allowed, and
``movement-cds kb schema`` exports them as JSON Schema so editors can complete and check
the files while they are typed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

__all__ = [
    "AdjustAction",
    "AlertAction",
    "AlertDefinition",
    "AllOf",
    "AnyOf",
    "AtLeast",
    "Condition",
    "DataGapAction",
    "DoseSpec",
    "Evidence",
    "ExerciseDefinition",
    "FactDefinition",
    "FactTest",
    "FindingAction",
    "Manifest",
    "NoneOf",
    "Param",
    "ParamTest",
    "ParameterDefinition",
    "PlanLimitAction",
    "RecommendAction",
    "Rule",
    "SafetyNetAction",
    "VetoAction",
]

Value = bool | int | float | str

Scope = Literal["patient", "exercise-response"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Direction(StrEnum):
    flexion = "flexion"
    extension = "extension"
    rotation = "rotation"
    lateral_flexion = "lateral-flexion"
    neutral = "neutral"


class Load(StrEnum):
    unloaded = "unloaded"
    bodyweight = "bodyweight"
    external = "external"


class Surface(StrEnum):
    stable = "stable"
    unstable = "unstable"


class EvidenceTag(StrEnum):
    R = "R"  # read in the primary source
    S = "S"  # read in a secondary summary only
    M = "M"  # unverified: configurable, and said so in the rationale


class Strength(StrEnum):
    strong = "strong"
    moderate = "moderate"
    weak = "weak"
    expert_opinion = "expert-opinion"


class AlertLevel(StrEnum):
    emergency = "emergency"
    urgent = "urgent"
    caution = "caution"
    information = "information"


class ReferralPriority(StrEnum):
    stat = "stat"
    asap = "asap"
    urgent = "urgent"
    routine = "routine"


# --- manifest -----------------------------------------------------------------------------


class ParameterDefinition(_Model):
    """A threshold a deployment may change (clinical governance), with its evidence tag."""

    value: Value
    description: str
    tag: EvidenceTag
    min: float | None = None
    max: float | None = None


class Manifest(_Model):
    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]
    version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")]
    title: str
    status: Literal["draft", "active", "retired"]
    description: str | None = None
    publisher: str | None = None
    strata: list[str] = Field(
        min_length=1,
        description="Evaluation order. A rule may test for the absence of a derived fact only "
        "when every rule that can produce it is in an earlier stratum.",
    )
    parameters: dict[str, ParameterDefinition] = Field(default_factory=dict)
    safety_net: list[str] = Field(
        default_factory=list,
        alias="safety-net",
        description="Safety-netting advice carried by every plan.",
    )


# --- fact catalog -------------------------------------------------------------------------


class Coding(_Model):
    system: str
    code: str
    display: str | None = None


class FactDefinition(_Model):
    """A fact the rules may read: an input item (with the code that carries it) or a
    finding/classification that rules derive."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*(\.[a-z0-9-]+)?$")]
    type: Literal["boolean", "integer", "decimal", "code"]
    description: str
    question: str | None = Field(
        default=None,
        description="The item in plain words, as it is asked (the catalog's facts section and "
        "the published Questionnaire items). Required for every fact an input code carries "
        "(one with a coding); not allowed on a derived fact.",
    )
    derived: bool = False
    min: float | None = None
    max: float | None = None
    codes: list[str] | None = Field(default=None, description="Allowed values for type code.")
    unit: str | None = None
    bilateral: bool = False
    coding: Coding | None = Field(default=None, description="The input code that carries it.")
    max_age_days: float | Param | None = Field(
        default=None,
        alias="max-age-days",
        description="An answer older than this (at the as-of instant) is stale and counts as "
        "missing, so it is asked again; never read as current.",
    )
    scope: Scope = Field(
        default="patient",
        description="exercise-response: a fact about the patient's response to one exercise "
        "of the previous plan (read only by rules of that scope, once per exercise).",
    )
    also_coded: list[Coding] = Field(
        default_factory=list,
        alias="also-coded",
        description="Further codes that carry the same fact (for example the several SNOMED "
        "codes of diabetes mellitus).",
    )
    red_flag: Literal["specific", "weak"] | None = Field(
        default=None,
        alias="red-flag",
        description="A red-flag screen answer: read as safety data (a 'yes' never expires "
        "silently, a later 'no' raises a caution, an undated 'yes' escalates). 'specific' "
        "points to one serious pathology; 'weak' is a general flag that never counts alone.",
    )
    lifelong: bool = Field(
        default=False,
        description="A red-flag item about history (any cancer, IV drug use, corticosteroid "
        "use): its 'yes' never expires and a later 'no' cannot erase it.",
    )
    hold_when_unreadable: bool = Field(
        default=False,
        alias="hold-when-unreadable",
        description="A red-flag item whose unreadable answer holds exercise until a readable "
        "answer exists (the cauda equina and motor items).",
    )
    history: bool = Field(
        default=False,
        description="A Condition fact that counts whatever its clinicalStatus (inactive, "
        "resolved, remission): the flag is a history (a cancer in remission).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> FactDefinition:
        if self.type == "code" and not self.codes:
            raise ValueError("a fact of type code lists its allowed codes")
        if self.type != "code" and self.codes:
            raise ValueError("codes are only for facts of type code")
        if (self.red_flag or self.lifelong or self.hold_when_unreadable) and (
                self.type != "boolean" or self.derived):
            raise ValueError("red-flag, lifelong and hold-when-unreadable are for boolean "
                             "input facts (red-flag screen answers)")
        if (self.lifelong or self.hold_when_unreadable) and self.red_flag is None:
            raise ValueError("lifelong and hold-when-unreadable need red-flag: specific|weak")
        if self.also_coded and self.coding is None:
            raise ValueError("also-coded needs a coding")
        if self.coding is not None and not (self.question or "").strip():
            raise ValueError(f"fact '{self.name}' is carried by an input code but has no "
                             "question: add the item in plain words (question: ...)")
        if self.derived and self.question is not None:
            raise ValueError(f"fact '{self.name}' is derived: a question is only for input "
                             "facts")
        return self


# --- catalog search synonyms ----------------------------------------------------------------


class SynonymGroup(_Model):
    """Words the catalog's search treats as the same (search-synonyms.yaml): UK and US
    spellings (anaesthesia, anesthesia) and the everyday words for a clinical term
    (incontinence, leaking). A search for any term also finds the others."""

    terms: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9' -]*[a-z0-9]$")]] = Field(
        min_length=2,
        description="Lower-case words or phrases, at least two; a search word that equals "
        "one of them (or a whole search that equals a phrase) finds every one.",
    )
    note: str | None = None


# --- exercise catalog ---------------------------------------------------------------------


class DoseSpec(_Model):
    """How much: machine-readable, and also said in words by the plan."""

    sets: int | None = Field(default=None, ge=1, le=10)
    repetitions: int | None = Field(default=None, ge=1, le=100)
    hold_seconds: int | None = Field(default=None, alias="hold-seconds", ge=1, le=600)
    tempo: str | None = Field(default=None, description="e.g. '3 s lowering, 1 s lifting'")
    frequency: int | None = Field(default=None, ge=1, le=14, description="sessions per period")
    period: int | None = Field(default=None, ge=1, le=14)
    period_unit: Literal["d", "wk"] | None = Field(default=None, alias="period-unit")
    load: str | None = Field(default=None, description="e.g. 'light resistance band'")
    pain_monitoring: str | None = Field(default=None, alias="pain-monitoring")


class ExerciseDefinition(_Model):
    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]
    title: str
    purpose: str = Field(description="The goal family; a plan holds one exercise per purpose.")
    instructions: str = Field(description="Plain-language instructions for the patient.")
    direction: list[Direction] = Field(min_length=1)
    load: Load
    surface: Surface
    position: str
    equipment: list[str] = Field(default_factory=list)
    dose: DoseSpec
    easier: str | None = Field(default=None, description="Regression: id of the easier exercise.")
    harder: str | None = Field(default=None, description="Progression: id of the harder one.")

    @model_validator(mode="after")
    def _dose_complete(self) -> ExerciseDefinition:
        d = self.dose
        missing = [
            k
            for k, v in (("sets", d.sets), ("frequency", d.frequency), ("period", d.period),
                         ("period-unit", d.period_unit), ("pain-monitoring", d.pain_monitoring))
            if v is None
        ]
        if missing:
            raise ValueError(f"default dose lacks {', '.join(missing)}")
        if d.repetitions is None and d.hold_seconds is None:
            raise ValueError("default dose needs repetitions or hold-seconds")
        return self


class AlertDefinition(_Model):
    code: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]
    display: str
    definition: str


# --- conditions ---------------------------------------------------------------------------


class Param(_Model):
    """A reference to a manifest parameter, resolved when the knowledge base is compiled."""

    param: str


Operand = Value | Param

_OP_ATTRS = (
    ("is", "is_"), ("is-not", "is_not"), ("lt", "lt"), ("le", "le"), ("gt", "gt"), ("ge", "ge"),
    ("in", "in_"), ("not-in", "not_in"), ("present", "present"), ("missing", "missing"),
)
_OPS = tuple(op for op, _ in _OP_ATTRS)


class FactTest(_Model):
    """A test on one fact. A test on a fact that is missing is never true (not even under
    ``not``): missing data is never read as normal. Use ``missing: true`` to act on absence."""

    fact: str
    is_: Operand | None = Field(default=None, alias="is")
    is_not: Operand | None = Field(default=None, alias="is-not")
    lt: float | Param | None = None
    le: float | Param | None = None
    gt: float | Param | None = None
    ge: float | Param | None = None
    in_: list[Value] | None = Field(default=None, alias="in", min_length=1)
    not_in: list[Value] | None = Field(default=None, alias="not-in", min_length=1)
    present: Literal[True] | None = None
    missing: Literal[True] | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> FactTest:
        given = [op for op, attr in _OP_ATTRS if getattr(self, attr) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a fact test takes exactly one of {', '.join(_OPS)}; got {given or 'none'}"
            )
        return self

    def operator(self) -> tuple[str, Any]:
        for op, attr in _OP_ATTRS:
            v = getattr(self, attr)
            if v is not None:
                return op, v
        raise AssertionError("validated to have one operator")


class AllOf(_Model):
    all: list[Condition] = Field(min_length=1)


class AnyOf(_Model):
    any: list[Condition] = Field(min_length=1)


class ParamTest(_Model):
    """A test on a manifest parameter, decided when the knowledge base is compiled (for
    configurable variants, e.g. which FMS scoring a service uses)."""

    param: str
    is_: Value = Field(alias="is")


class AtLeast(_Model):
    """True when at least ``at-least`` of the conditions are definitely true."""

    at_least: int | Param = Field(alias="at-least")
    of: list[Condition] = Field(min_length=2)

    @model_validator(mode="after")
    def _sensible(self) -> AtLeast:
        if isinstance(self.at_least, int) and not 1 <= self.at_least <= len(self.of):
            raise ValueError(f"at-least must be between 1 and {len(self.of)}")
        return self


class NoneOf(_Model):
    """True when the inner condition is definitely false (three-valued: unknown stays unknown)."""

    not_: Condition = Field(alias="not")


def _condition_tag(v: Any) -> str | None:
    if isinstance(v, dict):
        keys = set(v)
    elif isinstance(v, BaseModel):
        return {FactTest: "fact", AllOf: "all", AnyOf: "any", NoneOf: "not",
                AtLeast: "at-least", ParamTest: "param"}.get(type(v))
    else:
        return None
    for k in ("fact", "all", "any", "not", "at-least", "param"):
        if k in keys:
            return k
    return None


Condition = Annotated[
    Annotated[FactTest, Tag("fact")]
    | Annotated[AllOf, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[NoneOf, Tag("not")]
    | Annotated[AtLeast, Tag("at-least")]
    | Annotated[ParamTest, Tag("param")],
    Discriminator(
        _condition_tag,
        custom_error_type="condition",
        custom_error_message="a condition is one of: {fact: ...}, {all: [...]}, {any: [...]}, "
        "{not: ...}, {at-least: N, of: [...]}, {param: ..., is: ...}",
    ),
]

AllOf.model_rebuild()
AnyOf.model_rebuild()
NoneOf.model_rebuild()
AtLeast.model_rebuild()


# --- actions ------------------------------------------------------------------------------


class FindingAction(_Model):
    name: str
    value: Value = True


class Referral(_Model):
    priority: ReferralPriority
    to: str = Field(description="Who the patient is sent to, in the clinic's words.")


class AlertAction(_Model):
    code: str
    level: AlertLevel
    detail: str = Field(description="What the clinician is told, in plain words.")
    mitigation: str = Field(description="What the plan does about it.")
    referral: Referral | None = None
    holds_exercise: bool | None = Field(
        default=None,
        alias="holds-exercise",
        description="Defaults to true for stat, asap and urgent referrals. An alert that "
        "calls for such a referral always holds exercise, whatever this says.",
    )


class RecommendAction(_Model):
    exercise: str
    why: str = Field(description="Plain-language reason, naming the findings behind it.")
    dose: DoseSpec | None = None


class VetoAction(_Model):
    """Avoid every exercise whose properties match (all given properties must match)."""

    direction: list[Direction] | None = None
    load: list[Load] | None = None
    surface: list[Surface] | None = None
    why: str

    @model_validator(mode="after")
    def _some_property(self) -> VetoAction:
        if not (self.direction or self.load or self.surface):
            raise ValueError("a veto names at least one of direction, load, surface")
        return self

    def covers(self, ex: ExerciseDefinition) -> bool:
        """Whether this veto rules the exercise out: every property it names matches (one
        shared direction is enough); the one definition the plan, the linter and the
        catalog all use."""
        if self.direction and not set(self.direction) & set(ex.direction):
            return False
        if self.load and ex.load not in self.load:
            return False
        return not (self.surface and ex.surface not in self.surface)

    def described(self) -> str:
        """The properties it names, as the catalogs print them: ``direction flexion; load
        axial``."""
        named = (("direction", self.direction), ("load", self.load), ("surface", self.surface))
        return "; ".join(f"{k} {', '.join(x.value for x in vals)}" for k, vals in named if vals)


class DataGapAction(_Model):
    facts: list[str] = Field(min_length=1)
    detail: str


class SafetyNetAction(_Model):
    text: str


class PlanLimitAction(_Model):
    """Caps the number of exercises proposed (e.g. a minimal programme for low risk)."""

    max_exercises: int | Param = Field(alias="max-exercises")
    why: str


class AdjustAction(_Model):
    """What a follow-up rule proposes for one exercise of the previous plan. When several
    fire, the most cautious wins: stop > swap > regress > hold > progress."""

    decision: Literal["progress", "hold", "regress", "swap", "stop"]
    why: str = Field(description="Plain-language reason for the clinician, naming the "
                     "response values and the pain-monitoring model where it applies.")
    patient: str | None = Field(default=None, description="What the patient is told, in "
                                "plain words (second person).")


class Action(_Model):
    finding: FindingAction | None = None
    classification: FindingAction | None = None
    alert: AlertAction | None = None
    recommend: RecommendAction | None = None
    veto: VetoAction | None = None
    data_gap: DataGapAction | None = Field(default=None, alias="data-gap")
    safety_net: SafetyNetAction | None = Field(default=None, alias="safety-net")
    plan_limit: PlanLimitAction | None = Field(default=None, alias="plan-limit")
    adjust: AdjustAction | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Action:
        n = sum(1 for v in self.__dict__.values() if v is not None)
        if n != 1:
            raise ValueError(
                "each item of then is exactly one of finding, classification, alert, "
                "recommend, veto, data-gap, safety-net, plan-limit, adjust"
            )
        return self

    def kind(self) -> str:
        for k, v in self.__dict__.items():
            if v is not None:
                return k.replace("_", "-")
        raise AssertionError("validated")


def evidence_url(evidence_id: str) -> str | None:
    """Where a reader can look an evidence id up: PubMed, PMC, doi.org or the cited URL;
    None for guideline and ISBN ids, which have none."""
    kind, _, value = evidence_id.partition(":")
    value = value.strip()
    if not value:
        return None
    if kind == "PMID":
        return f"https://pubmed.ncbi.nlm.nih.gov/{value}/"
    if kind == "PMCID":
        return f"https://www.ncbi.nlm.nih.gov/pmc/articles/{value}/"
    if kind == "DOI":
        return f"https://doi.org/{value}"
    if kind == "URL" and value.startswith(("http://", "https://")):
        return value
    return None


class Evidence(_Model):
    id: Annotated[
        str,
        Field(
            pattern=r"^(PMID:\d+|PMCID:PMC\d+|DOI:10\.\S+|ISBN:[0-9X-]+|URL:https?://\S+"
            r"|GUIDELINE:[A-Za-z0-9._-]+)$",
            description="Stable identifier: PMID:…, PMCID:PMC…, DOI:10.…, URL:…, GUIDELINE:…",
        ),
    ]
    citation: str
    tag: EvidenceTag
    strength: Strength
    grade: str | None = Field(default=None, description="e.g. the guideline's own grade 'A'")
    note: str | None = None


class Rule(_Model):
    id: Annotated[str, Field(pattern=r"^[A-Z]{2,3}-[0-9]{2}[A-Za-z0-9-]*$")]
    title: str
    stratum: str
    priority: int = Field(default=50, ge=0, le=99, description="Lower fires first.")
    scope: Scope = Field(
        default="patient",
        description="patient: evaluated once per visit. exercise-response: evaluated once "
        "per exercise of the previous plan, on that exercise's response facts (follow-up).",
    )
    description: str | None = None
    when: Condition
    then: list[Action] = Field(min_length=1)
    evidence: list[Evidence] = Field(min_length=1)
    overrides: list[str] = Field(
        default_factory=list,
        description="Ids of rules whose recommendations this rule's veto is meant to "
        "override: acknowledges the overlap `kb validate` reports (documentation only).",
    )
