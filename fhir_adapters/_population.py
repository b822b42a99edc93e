"""Seeded synthetic populations of FHIR R4 input Bundles, for comparing knowledge bases.

Two populations, both made at the FHIR level so that each knowledge-base version reads the
very same input with its own fact catalog:

* the **mixed** population (``synthetic_bundle``), for ``kb diff``: every kind of input a
  clinic sends, imperfect data included (below);
* the **primary-care** population (``primary_care_bundle``), for ``kb profile``: complete,
  current red-flag screens answered "yes" at documented primary-care rates (the table
  ``PRIMARY_CARE_RATES`` further down, each rate with its source or marked as an assumption).

``synthetic_bundle(seed, index, as_of)`` builds patient ``index`` of population ``seed``: a
Bundle that an EHR could send under the input contract (the Observations, Conditions and
codes listed in docs/knowledge-base-format.md and docs/integrators/cds-hooks.md).
Its codes and value ranges (the table below) are copied from the contract, not from any
knowledge base, so that a version that changes how old an answer may be, or a range, sees
the change (tests/test_kb_diff.py and tests/test_generators_match_kb.py check the table and
the red-flag list against the bundled catalog). The resources themselves are made with the
project's one input builder (``fhir_adapters._bundle_builder``).

Each patient depends only on ``(seed, index, as_of)`` (its own ``random.Random``), so the
population is deterministic, can be cut into chunks for worker processes in any way, and a
patient can be rebuilt from its index alone to look at it.

What it covers, at rough clinical rates (a low back pain clinic, not a red-flag clinic):
whole, partial and missing red-flag screens with rare positive answers (a core cauda-equina
item in well under 1% of patients); missing answers of every kind (no questionnaire, no
movement screen, a test not done, no birth date or gender, a partial birth date); status
``preliminary`` (used, noted) and ignored statuses; stale answers beyond the default maximum
ages; superseded older answers; bilateral tests sent per side (SNOMED left/right components)
or as one top-level value; ``lbp-provoked`` components; STarT Back as items, totals or both;
values sent as ``valueQuantity`` or ``valueInteger``; an occasional out-of-range value (which
the contract says counts as missing); Conditions with every clinical and verification status
that matters; pregnancy as a Condition or as a LOINC 82810-3 Observation. Follow-up
Observations and previous CarePlans are not generated.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

from fhir_adapters._bundle_builder import (
    bundle,
    concept,
    condition,
    observation,
    patient,
    provoked_component,
    quantity,
    side_component,
    value_x,
)
from fhir_adapters._errors import UnclassifiedRedFlagError, UndocumentedRedFlagError
from fhir_adapters._terminology import (
    CLINICAL_STATUS,
    LOINC,
    SCREEN_SYSTEM,
    SNOMED,
    VERIFICATION_STATUS,
)

if TYPE_CHECKING:
    from cds import KnowledgeBase

__all__ = [
    "CONTRACT_ITEMS",
    "PRIMARY_CARE_RATES",
    "ContractItem",
    "PrimaryCareRate",
    "RedFlagItem",
    "UnclassifiedRedFlagError",
    "UndocumentedRedFlagError",
    "primary_care_bundle",
    "red_flag_items",
    "synthetic_bundle",
    "synthetic_population",
]

_NS: Final = uuid.UUID("3b9e4c1d-7a52-4f0e-9c6b-2d8a1f5e7c30")

Kind = Literal["boolean", "integer", "decimal", "code"]


@dataclass(frozen=True)
class ContractItem:
    """One Observation the input contract defines: code, value type and range."""

    key: str  # the screen code, or a readable name for LOINC items
    system: str
    code: str
    kind: Kind
    low: float = 0
    high: float = 0
    codes: tuple[str, ...] = ()
    unit: str | None = None
    bilateral: bool = False
    provoked: bool = False  # FMS and loaded patterns carry a screen#lbp-provoked component


def _screen(code: str, kind: Kind, low: float = 0, high: float = 0, **kw: Any) -> ContractItem:
    return ContractItem(code, SCREEN_SYSTEM, code, kind, low, high, **kw)


_RESPONSES = ("centralizes", "peripheralizes", "no-effect", "increases-back-pain")
# how often each red flag of the contract is answered "present" (per patient screened), in
# the bundled catalog's order (the tests check the names against it); rough primary-care
# rates: cauda equina items are rare, cancer history and "not improving" are common
RED_FLAG_RATES: Final[dict[str, float]] = {
    "rf-saddle-anaesthesia": 0.002, "rf-bladder-dysfunction": 0.004,
    "rf-bowel-dysfunction": 0.002, "rf-bilateral-leg-symptoms": 0.02,
    "rf-progressive-weakness": 0.008, "rf-foot-drop": 0.003, "rf-sexual-dysfunction": 0.01,
    "rf-fever": 0.008, "rf-unexplained-weight-loss": 0.012, "rf-cancer-history": 0.05,
    "rf-night-pain": 0.06, "rf-significant-trauma": 0.03, "rf-corticosteroid-use": 0.02,
    "rf-iv-drug-use": 0.004, "rf-immunosuppression": 0.015, "rf-recent-infection": 0.02,
    "rf-pulsatile-abdominal-mass": 0.001, "rf-not-improving": 0.15,
}
RED_FLAGS: Final = tuple(RED_FLAG_RATES)
FMS_TESTS: Final = (
    ("fms-deep-squat", False), ("fms-hurdle-step", True), ("fms-inline-lunge", True),
    ("fms-shoulder-mobility", True), ("fms-active-slr", True),
    ("fms-trunk-stability-pushup", False), ("fms-rotary-stability", True),
)
PATTERNS: Final = (("pattern-squat", False), ("pattern-hinge", False),
                   ("pattern-lateral-bend", True))

#: Every Observation of the input contract except follow-up responses.
CONTRACT_ITEMS: Final[dict[str, ContractItem]] = {
    i.key: i for i in [
        ContractItem("pain-now", LOINC, "72514-3", "integer", 0, 10, unit="{score}"),
        ContractItem("odi-score", LOINC, "97909-6", "decimal", 0, 100, unit="%"),
        ContractItem("startback-total", LOINC, "91351-7", "integer", 0, 9),
        ContractItem("phq2-total", LOINC, "55758-7", "integer", 0, 6),
        _screen("startback-psychosocial", "integer", 0, 5),
        *(_screen(f"startback-item-{n}", "boolean") for n in range(1, 10)),
        _screen("episode-duration", "decimal", 0, 36500, unit="d"),
        _screen("symptom-distribution", "code",
                codes=("back-only", "above-knee", "below-knee", "both-legs")),
        *(_screen(code, "integer", 0, 3, bilateral=bi, provoked=True)
          for code, bi in FMS_TESTS + PATTERNS),
        _screen("fms-total", "integer", 0, 21),
        _screen("clear-shoulder", "boolean", bilateral=True),
        _screen("clear-spinal-extension", "boolean"),
        _screen("clear-spinal-flexion", "boolean"),
        _screen("slr-angle", "decimal", 0, 180, unit="deg", bilateral=True),
        _screen("prone-instability-test", "boolean"),
        _screen("aberrant-movement", "boolean"),
        _screen("directional-preference", "code", codes=(
            "extension", "flexion", "lateral-shift-left", "lateral-shift-right", "none")),
        _screen("repeated-flexion-response", "code", codes=_RESPONSES),
        _screen("repeated-extension-response", "code", codes=_RESPONSES),
        _screen("myotome-strength", "integer", 0, 5, bilateral=True),
        *(_screen(rf, "boolean") for rf in RED_FLAGS),
    ]
}

#: Condition codes of the contract (SNOMED CT).
CONDITIONS: Final[dict[str, str]] = {
    "osteoporosis": "64859006", "pregnancy": "77386006", "cancer": "363346000",
    "aaa": "233985008", "cauda-equina": "192970008", "low-back-pain": "279039007",
    "chronic-low-back-pain": "278860009", "sciatica": "23056005", "hiv": "86406008",
    "diabetes": "73211009",
}
PREGNANCY_STATUS: Final = "82810-3"
PREGNANT: Final = "LA15173-0"
NOT_PREGNANT: Final = "LA26683-5"


class _Patient:
    """Builds one Bundle; every random choice goes through ``self.rng``."""

    def __init__(self, seed: int, index: int, as_of: datetime) -> None:
        self.rng = random.Random(f"movement-cds-population:{seed}:{index}")
        self.index = index
        self.as_of = as_of
        self.pid = f"syn-{index}"
        self.resources: list[dict[str, Any]] = []
        self.n_obs = 0

    # --- helpers
    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def days_ago(self, typical: float, stale: float, p_stale: float) -> datetime:
        """When an answer was recorded: usually within ``typical`` days, sometimes older
        than ``stale`` days (stale under the default maximum ages)."""
        if self.chance(p_stale):
            days = stale + self.rng.uniform(1, stale)
        else:
            days = self.rng.uniform(0, typical)
        return self.as_of - timedelta(days=days, minutes=self.rng.randint(1, 240))

    def status(self) -> str:
        r = self.rng.random()
        if r < 0.93:
            return "final"
        if r < 0.96:
            return "preliminary"
        if r < 0.975:
            return "amended"
        if r < 0.985:
            return "corrected"
        return self.rng.choice(("registered", "cancelled", "entered-in-error", "unknown"))

    def value(self, item: ContractItem, v: Any) -> dict[str, Any]:
        """The contract's value[x]; sometimes a score as a Quantity, or a % as an integer."""
        if item.kind == "integer" and item.unit == "{score}" and self.chance(0.3):
            return quantity(v, item.unit)
        if item.kind == "decimal" and item.unit == "%" and self.chance(0.2):
            return value_x("integer", round(v))
        return value_x(item.kind, v, item.unit)

    def out_of_range(self, item: ContractItem) -> Any:
        if item.kind == "integer":
            return int(item.high) + self.rng.randint(1, 5)
        return round(item.high * 1.5 + 1, 1)

    def observation(
        self, key: str, v: Any = None, *, when: datetime, status: str | None = None,
        left: Any = None, right: Any = None, provoked: bool | None = None,
        system: str | None = None, code: str | None = None,
        raw: dict[str, Any] | None = None,
    ) -> None:
        item = CONTRACT_ITEMS.get(key)
        self.n_obs += 1
        if item is not None and left is None and v is not None and item.kind != "boolean" \
                and item.kind != "code" and self.chance(0.003):
            v = self.out_of_range(item)  # a mistyped value: the contract says "not used"
        status = status or self.status()  # every random draw in the order it always had
        value = raw if raw is not None else (
            self.value(item, v) if v is not None and item is not None else None)
        comps = [side_component(side, self.value(item, sv))
                 for side, sv in (("left", left), ("right", right))
                 if sv is not None and item is not None]
        if provoked is not None:
            comps.append(provoked_component(provoked))
        self.resources.append(observation(
            concept(system or (item.system if item else SCREEN_SYSTEM),
                    code or (item.code if item else key)),
            oid=f"obs-{self.n_obs}", status=status, subject=f"Patient/{self.pid}",
            when=when.strftime("%Y-%m-%dT%H:%M:%SZ"), value=value, components=comps))

    def condition(self, name: str, *, when: datetime) -> None:
        r = self.rng.random()
        clinical = ("active" if r < 0.85 else "recurrence" if r < 0.88
                    else self.rng.choice(("inactive", "resolved", "remission")))
        r = self.rng.random()
        verification = ("confirmed" if r < 0.9 else "unconfirmed" if r < 0.95
                        else self.rng.choice(("refuted", "entered-in-error", "provisional")))
        res = condition(concept(SNOMED, CONDITIONS[name]), cid=f"cond-{len(self.resources)}",
                        subject=f"Patient/{self.pid}", onset=when.date().isoformat())
        if not self.chance(0.03):  # sometimes no clinicalStatus at all (counts as active)
            res["clinicalStatus"] = concept(CLINICAL_STATUS, clinical)
        res["verificationStatus"] = concept(VERIFICATION_STATUS, verification)
        self.resources.append(res)

    # --- the parts of a visit
    def person(self) -> tuple[int, str | None]:
        rng = self.rng
        age = min(95, max(16, round(rng.gauss(48, 16))))
        r = rng.random()
        gender = ("female" if r < 0.52 else "male" if r < 0.97 else "other" if r < 0.985
                  else "unknown" if r < 0.99 else None)
        born = self.as_of.date() - timedelta(days=round(age * 365.25) + rng.randint(0, 364))
        res = patient(self.pid)  # birthDate, then gender: as the population always wrote them
        r = rng.random()
        if r < 0.96:
            res["birthDate"] = born.isoformat()
        elif r < 0.98:
            res["birthDate"] = f"{born.year:04d}"  # partial: the age that is certain is used
        if gender is not None:
            res["gender"] = gender
        self.resources.insert(0, res)
        return age, gender

    def red_flag_screen(self, age: int) -> None:
        r = self.rng.random()
        if r < 0.05:
            return  # not asked at this visit
        asked = list(RED_FLAGS)
        if r < 0.15:  # partly asked
            for rf in self.rng.sample(asked, self.rng.randint(1, 6)):
                asked.remove(rf)
        when = self.days_ago(7, 14, 0.06)  # one sitting; sometimes older than 14 days
        for rf in asked:
            rate = RED_FLAG_RATES[rf] * (2.0 if age >= 65 and rf in (
                "rf-cancer-history", "rf-significant-trauma", "rf-unexplained-weight-loss")
                else 1.0)
            self.observation(rf, self.chance(rate), when=when)

    def symptoms(self) -> None:
        rng, when = self.rng, self.days_ago(10, 30, 0.05)
        if self.chance(0.92):
            self.observation("pain-now", min(10, max(0, round(rng.gauss(5, 2.2)))), when=when)
            if self.chance(0.06):  # an older answer, superseded by the one above
                self.observation("pain-now", rng.randint(0, 10),
                                 when=when - timedelta(days=rng.randint(1, 20)))
        if self.chance(0.85):
            r = rng.random()
            days = (rng.uniform(1, 42) if r < 0.3 else rng.uniform(42, 90) if r < 0.45
                    else rng.uniform(90, 3650))
            self.observation("episode-duration", round(days, 1), when=when)
        if self.chance(0.8):
            self.observation("symptom-distribution", self.distribution(), when=when)
        if self.chance(0.45):
            self.observation("repeated-flexion-response", rng.choices(
                _RESPONSES, (15, 15, 55, 15))[0], when=when)
        if self.chance(0.45):
            self.observation("repeated-extension-response", rng.choices(
                _RESPONSES, (25, 8, 55, 12))[0], when=when)
        if self.chance(0.5):
            self.observation("directional-preference", rng.choices(
                CONTRACT_ITEMS["directional-preference"].codes, (35, 12, 4, 4, 45))[0],
                when=when)
        self.myotome(when)

    def distribution(self) -> str:
        return self.rng.choices(CONTRACT_ITEMS["symptom-distribution"].codes, (50, 25, 20, 5))[0]

    def myotome(self, when: datetime) -> None:
        if self.chance(0.35):
            self.strength(3, 4, 0.1, when)

    def strength(self, low: int, high: int, p_weak: float, when: datetime) -> None:
        """Lower-limb strength: one side ``low``..``high`` with probability ``p_weak``."""
        rng = self.rng
        weak = self.chance(p_weak)
        sides = [rng.randint(low, high) if weak else 5, 5]
        rng.shuffle(sides)
        if self.chance(0.85):
            self.observation("myotome-strength", when=when, left=sides[0], right=sides[1])
        else:
            self.observation("myotome-strength", min(sides), when=when)

    def questionnaires(self) -> None:
        rng, when = self.rng, self.days_ago(20, 90, 0.08)
        if self.chance(0.6):
            self.observation("odi-score", float(min(100, max(0, round(rng.gauss(30, 16))))),
                             when=when)
        if self.chance(0.55):
            items = [self.chance(p) for p in (0.35, 0.3, 0.25, 0.4, 0.3, 0.35, 0.3, 0.3, 0.2)]
            r = rng.random()
            if r < 0.6:  # items only: the totals are computed
                for n, agree in enumerate(items, 1):
                    self.observation(f"startback-item-{n}", agree, when=when)
            elif r < 0.8:  # totals only
                self.observation("startback-total", sum(items), when=when)
                self.observation("startback-psychosocial", sum(items[4:]), when=when)
            else:  # both, consistent
                for n, agree in enumerate(items, 1):
                    self.observation(f"startback-item-{n}", agree, when=when)
                self.observation("startback-total", sum(items), when=when)
                self.observation("startback-psychosocial", sum(items[4:]), when=when)
        if self.chance(0.45):
            self.observation("phq2-total", rng.choices(range(7), (40, 15, 15, 10, 10, 5, 5))[0],
                             when=when)

    def score(self) -> int:
        return self.rng.choices((0, 1, 2, 3), (4, 22, 50, 24))[0]

    def movement_screen(self) -> None:
        rng = self.rng
        if not self.chance(0.6):
            return
        when = self.days_ago(30, 90, 0.08)
        lows = []
        for code, bilateral in FMS_TESTS:
            if not self.chance(0.9):
                continue
            provoked = self.chance(0.12) if self.chance(0.6) else None
            if bilateral and self.chance(0.8):
                left, right = self.score(), self.score()
                if self.chance(0.6):
                    right = left  # most people are symmetric
                lows.append(min(left, right))
                self.observation(code, when=when, left=left, right=right, provoked=provoked)
            else:
                s = self.score()
                lows.append(s)
                self.observation(code, s, when=when, provoked=provoked)
        if len(lows) == 7 and self.chance(0.4):
            self.observation("fms-total", sum(lows), when=when)
        if self.chance(0.5):
            self.observation("clear-shoulder", when=when, left=self.chance(0.05),
                             right=self.chance(0.05))
            self.observation("clear-spinal-extension", self.chance(0.12), when=when)
            self.observation("clear-spinal-flexion", self.chance(0.1), when=when)
        if self.chance(0.6):
            for code, bilateral in PATTERNS:
                if not self.chance(0.85):
                    continue
                provoked = self.chance(0.2) if self.chance(0.7) else None
                if bilateral:
                    self.observation(code, when=when, left=self.score(), right=self.score(),
                                     provoked=provoked)
                else:
                    self.observation(code, self.score(), when=when, provoked=provoked)
        if self.chance(0.5):
            a, b = rng.uniform(35, 90), rng.uniform(35, 90)
            if self.chance(0.8):
                self.observation("slr-angle", when=when, left=round(a), right=round(b))
            else:
                self.observation("slr-angle", float(round(min(a, b))), when=when)
        if self.chance(0.35):
            self.observation("prone-instability-test", self.chance(0.3), when=when)
        if self.chance(0.35):
            self.observation("aberrant-movement", self.chance(0.25), when=when)

    def conditions(self, age: int, gender: str | None) -> None:
        when = self.days_ago(400, 1000, 0.2)
        r = self.rng.random()
        if r < 0.7:
            self.condition(self.rng.choice(("low-back-pain", "chronic-low-back-pain",
                                            "sciatica")), when=when)
        older_woman = gender == "female" and age >= 60
        if self.chance(0.2 if older_woman else 0.02):
            self.condition("osteoporosis", when=when)
        if self.chance(0.03 if age >= 50 else 0.01):
            self.condition("cancer", when=when)
        if self.chance(0.01 if gender == "male" and age >= 65 else 0.001):
            self.condition("aaa", when=when)
        if self.chance(0.001):
            self.condition("cauda-equina", when=when)
        self.pregnancy(age, gender)
        if self.chance(0.06):
            self.condition("diabetes", when=when)
        if self.chance(0.003):
            self.condition("hiv", when=when)

    def pregnancy(self, age: int, gender: str | None) -> None:
        if gender == "female" and 16 <= age <= 45:
            if self.chance(0.03):
                self.condition("pregnancy", when=self.days_ago(60, 300, 0.1))
            elif self.chance(0.05):
                answer = PREGNANT if self.chance(0.3) else NOT_PREGNANT
                self.observation(
                    "pregnancy-status", when=self.days_ago(30, 300, 0.1), system=LOINC,
                    code=PREGNANCY_STATUS,
                    raw={"valueCodeableConcept": concept(LOINC, answer)})

    def visit(self) -> list[dict[str, Any]]:
        """The resources of the visit (the Patient first), without a Bundle around them."""
        age, gender = self.person()
        self.red_flag_screen(age)
        self.symptoms()
        self.questionnaires()
        self.movement_screen()
        self.conditions(age, gender)
        return self.resources

    def bundle(self) -> dict[str, Any]:
        self.visit()
        kind = "searchset" if self.chance(0.1) else "collection"
        return bundle(self.resources, namespace=_NS, key_prefix=f"{self.pid}/",
                      bundle_id=f"synthetic-{self.index}", type=kind)


# --- the primary-care population (kb profile) ---------------------------------------------
#
# Complete, current red-flag screens in a primary-care mix of people with low back pain, for
# the clinical-governance profile of a knowledge base (``movement-cds kb profile``).
#
# What was read (the abstract, PubMed 19790051): Henschke N et al. Prevalence of and screening
# for serious spinal pathology in patients presenting to primary care settings with acute low
# back pain. Arthritis Rheum 2009;60(10):3072-80. In 1,172 consecutive primary-care patients,
# 11 (0.9%) had serious pathology (8 of them vertebral fractures); 80.4% had at least one of
# 25 red flags (median 2, IQR 1-3); only three fracture flags were informative (prolonged
# corticosteroid use, age > 70, significant trauma). The project's knowledge brief (section
# 1b) also cites Downie 2014 (most single red flags have poor diagnostic accuracy) and, in a
# secondary summary, Henschke 2013 (Cochrane CD008686: malignancy 0.3% before the test, 4.6%
# after a positive history of cancer).
#
# The per-item "yes" rates below are NOT from a table that was read: the abstract gives no
# per-item prevalence. Each is marked as an assumption, chosen to be consistent with the read
# aggregates: serious pathology about 1% (so specific answers are rare, cauda equina items
# rarest), but positive answers common (false positives: weak general flags such as night pain
# and "not improving" are frequent). The Henschke screen had 25 questions, several of which
# (insidious onset, no relief from bed rest, morning stiffness) this screen does not ask, so
# the share of patients with at least one positive answer here is lower than 80%. Answers are
# drawn independently; the only dependencies are the clinical consistency rules in
# ``_PrimaryCarePatient`` (a measured motor deficit, leg symptoms in both legs and a cancer
# Condition only come with the matching answer). Clinical governance should replace any rate
# with a local audit figure where one exists.


@dataclass(frozen=True)
class PrimaryCareRate:
    """How often a red-flag question is answered "yes" in primary care, and where that comes
    from. ``older`` multiplies the rate from age 65 (more cancer history, trauma from falls)."""

    rate: float
    source: str
    older: float = 1.0


_ASSUMED = "assumption (no per-item primary-care prevalence read)"

#: The "yes" rate of every red-flag screen item of the fact catalog. A catalog item missing
#: here stops ``kb profile`` with an error naming it (it has no documented rate).
PRIMARY_CARE_RATES: Final[dict[str, PrimaryCareRate]] = {
    # cauda equina items: rare. CES itself is far below 1% of primary-care LBP (Henschke 2009
    # found none among its 11 cases); a "yes" is more common than the syndrome (urinary
    # symptoms have other causes), hence bladder above saddle and bowel.
    "rf-saddle-anaesthesia": PrimaryCareRate(0.002, _ASSUMED),
    "rf-bladder-dysfunction": PrimaryCareRate(0.006, _ASSUMED),
    "rf-bowel-dysfunction": PrimaryCareRate(0.002, _ASSUMED),
    "rf-bilateral-leg-symptoms": PrimaryCareRate(0.02, _ASSUMED),
    "rf-progressive-weakness": PrimaryCareRate(0.005, _ASSUMED),
    "rf-foot-drop": PrimaryCareRate(0.002, _ASSUMED),
    "rf-sexual-dysfunction": PrimaryCareRate(0.015, _ASSUMED),
    "rf-fever": PrimaryCareRate(0.01, _ASSUMED),
    "rf-unexplained-weight-loss": PrimaryCareRate(0.02, _ASSUMED, older=1.5),
    # "a few per cent" (issue 12); Henschke 2013 gives how much it raises the probability of
    # malignancy, not how common it is
    "rf-cancer-history": PrimaryCareRate(0.03, _ASSUMED, older=2.0),
    "rf-night-pain": PrimaryCareRate(0.10, _ASSUMED),
    # the commonest serious pathology in Henschke 2009 is fracture (8 of 1,172); trauma is
    # informative there, so a "yes" is not rare
    "rf-significant-trauma": PrimaryCareRate(0.03, _ASSUMED, older=1.5),
    "rf-corticosteroid-use": PrimaryCareRate(0.015, _ASSUMED, older=1.5),
    "rf-iv-drug-use": PrimaryCareRate(0.003, _ASSUMED),
    "rf-immunosuppression": PrimaryCareRate(0.01, _ASSUMED),
    "rf-recent-infection": PrimaryCareRate(0.02, _ASSUMED),
    "rf-pulsatile-abdominal-mass": PrimaryCareRate(0.001, _ASSUMED),
    # persistent pain: many people seen for back pain have not improved after 4-6 weeks
    # (close to the entry criterion of a persistent-pain service, knowledge brief 1b)
    "rf-not-improving": PrimaryCareRate(0.25, _ASSUMED),
}

#: The red-flag screen is dated within this many days before the as-of instant (current
#: under any maximum answer age of the knowledge base).
SCREEN_WITHIN_DAYS: Final = 3.0

RedFlagClass = Literal["specific", "weak"]


@dataclass(frozen=True)
class RedFlagItem:
    """A red-flag screen question as a knowledge base's fact catalog defines it."""

    name: str
    kind: RedFlagClass  # specific: points to one serious pathology; weak: a general flag
    system: str
    code: str


def red_flag_items(kb: KnowledgeBase) -> tuple[RedFlagItem, ...]:
    """The red-flag screen items of ``kb``'s fact catalog (every input fact with a
    ``red-flag: specific|weak`` class), in catalog order. Raises
    ``UndocumentedRedFlagError`` for an item without a documented primary-care rate, and
    for an ``rf-*`` input fact without a class."""
    if not any(d.red_flag for d in kb.facts.values()):
        raise UnclassifiedRedFlagError(
            "its fact catalog gives no red-flag item a 'red-flag: specific|weak' class")
    items = []
    for name, d in kb.facts.items():
        if d.derived or d.coding is None:
            continue
        if d.red_flag is None:
            if name.startswith("rf-"):
                raise UndocumentedRedFlagError(
                    f"fact {name} looks like a red-flag answer but has no 'red-flag: "
                    "specific|weak' class in the fact catalog")
            continue
        if name not in PRIMARY_CARE_RATES:
            raise UndocumentedRedFlagError(
                f"red-flag item {name} has no documented primary-care rate (add it to "
                "PRIMARY_CARE_RATES in fhir_adapters/_population.py, with its source)")
        items.append(RedFlagItem(name, d.red_flag, d.coding.system, d.coding.code))
    return tuple(items)


_MOTOR = ("rf-foot-drop", "rf-progressive-weakness")


class _PrimaryCarePatient(_Patient):
    """A primary-care visit: the whole red-flag screen answered, as one sitting, within the
    last few days; the rest of the visit as in the mixed population, made consistent with the
    answers (a measured severe motor deficit or leg symptoms in both legs only with the
    matching "yes"; red-flag Conditions at plain prevalences or with the matching "yes")."""

    def __init__(self, seed: int, index: int, as_of: datetime,
                 items: tuple[RedFlagItem, ...]) -> None:
        super().__init__(seed, index, as_of)
        self.rng = random.Random(f"movement-cds-primary-care:{seed}:{index}")
        self.items = items
        self.positive: set[str] = set()

    def red_flag_screen(self, age: int) -> None:
        when = self.as_of - timedelta(days=self.rng.uniform(0, SCREEN_WITHIN_DAYS),
                                      minutes=self.rng.randint(1, 60))
        for item in self.items:
            documented = PRIMARY_CARE_RATES[item.name]
            rate = documented.rate * (documented.older if age >= 65 else 1.0)
            yes = self.chance(rate)
            if yes:
                self.positive.add(item.name)
            self.observation(item.name, when=when, status="final", system=item.system,
                             code=item.code, raw={"valueBoolean": yes})

    def distribution(self) -> str:
        if "rf-bilateral-leg-symptoms" in self.positive:
            return "both-legs"
        return self.rng.choices(("back-only", "above-knee", "below-knee"), (50, 25, 20))[0]

    def myotome(self, when: datetime) -> None:
        if self.positive.intersection(_MOTOR):
            self.strength(1, 3, 0.8, when)  # a reported motor "yes" is usually measurable
        elif self.chance(0.35):
            self.strength(4, 4, 0.05, when)  # mild weakness (4/5) of a radiculopathy

    def conditions(self, age: int, gender: str | None) -> None:
        when = self.days_ago(400, 1000, 0.2)
        if self.chance(0.7):
            self.condition(self.rng.choice(("low-back-pain", "chronic-low-back-pain",
                                            "sciatica")), when=when)
        # prevalences below are assumptions (general-population orders of magnitude)
        if self.chance(0.15 if gender == "female" and age >= 60 else 0.02):
            self.condition("osteoporosis", when=when)
        if "rf-cancer-history" in self.positive and self.chance(0.5):
            self.condition("cancer", when=when)  # any clinical status: a history
        if self.chance(0.01 if gender == "male" and age >= 65 else 0.0005):
            self.condition("aaa", when=when)
        if self.chance(0.12 if age >= 50 else 0.04):
            self.condition("diabetes", when=when)
        if "rf-immunosuppression" in self.positive and self.chance(0.1):
            self.condition("hiv", when=when)
        self.pregnancy(age, gender)


def primary_care_bundle(seed: int, index: int, as_of: datetime,
                        items: tuple[RedFlagItem, ...]) -> dict[str, Any]:
    """Patient ``index`` of primary-care population ``seed``, with every red-flag item of
    ``items`` (``red_flag_items(kb)``) answered within ``SCREEN_WITHIN_DAYS`` before
    ``as_of``. The same arguments always give the same Bundle."""
    return _PrimaryCarePatient(seed, index, as_of, items).bundle()


def synthetic_bundle(seed: int, index: int, as_of: datetime) -> dict[str, Any]:
    """Patient ``index`` of population ``seed``: a FHIR R4 Bundle (a plain dict), dated
    before ``as_of``. The same arguments always give the same Bundle."""
    return _Patient(seed, index, as_of).bundle()


def synthetic_population(
    n: int, seed: int, as_of: datetime, start: int = 0
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, bundle)`` for patients ``start`` .. ``start + n - 1``."""
    for i in range(start, start + n):
        yield i, synthetic_bundle(seed, i, as_of)
