"""Write the clinical vignettes: one FHIR R4 Bundle per person, deterministically.

    python knowledge_base/scenarios/vignettes/_generate.py            # rewrite the files
    python knowledge_base/scenarios/vignettes/_generate.py --check    # exit 1 if any is stale

Each vignette is one small function below whose docstring tells the clinical story. What the
plan must say about that person lives in ``../vignettes.yaml`` (scenario ``vignette-<id>``,
``bundle: vignettes/<id>.json``), written from the knowledge brief, not from the rules.

Every file is a Bundle of type ``collection`` with one Patient (birthDate, gender) and
Observations and Conditions that carry ids, ``subject`` references to that Patient and
dates. Scenarios evaluate them as of 2026-11-02T09:00:00Z; answers are dated 2026-10-28 to
2026-11-01 so that none is stale (red-flag answers older than 14 days count as unanswered),
except where a vignette is about stale answers. Codes and displays come from the bundled
knowledge base's fact catalog, so the vignettes stay in step with it. Ids and ``urn:uuid``
fullUrls derive from the vignette and resource names, and the JSON is written with sorted
keys, so regenerating gives byte-identical files.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cds import load_knowledge_base  # noqa: E402
from fhir_adapters import BundleBuilder, patient  # noqa: E402
from knowledge_base import bundled_path  # noqa: E402

KB = load_knowledge_base(bundled_path())
NAMESPACE = uuid.UUID("3d1c6a8e-9f4b-4e27-b0a5-7c2e1f9d8b64")

# When things were recorded (the scenarios evaluate as of 2026-11-02T09:00:00Z).
INTAKE = "2026-10-28T15:20:00Z"  # episode duration and history, at booking
QUESTIONNAIRES = "2026-10-30T18:45:00Z"  # STarT Back, PHQ-2, Oswestry, filled in at home
PAIN_RATED = "2026-11-01T09:10:00Z"
# the builder's defaults: red-flag screen asked at the visit at 09:05, symptom distribution,
# repeated movements and neuro exam at 09:30, movement screen and loaded patterns at 10:00
SCREENED = "2026-11-01T10:00:00Z"


class Vignette(BundleBuilder):
    """The resources of one vignette Bundle, all about one Patient."""

    def __init__(self, name: str, *, birth_date: str, gender: str) -> None:
        super().__init__(
            KB, patient(f"pat-{name}", mrn=f"VIGNETTE-{name}", gender=gender,
                        birth_date=birth_date),
            bundle_id=f"vignette-{name}", namespace=NAMESPACE, key_prefix=f"vignette/{name}/",
            timestamp="2026-11-01T11:00:00Z")
        self.name = name

    def pain(self, nrs: int, *, odi: float | None = None, days: float | None = None,
             where: str | None = None) -> None:
        """Pain now (NRS), Oswestry %, episode duration in days and where symptoms reach."""
        self.obs("pain-now", nrs, when=PAIN_RATED)
        if odi is not None:
            self.obs("odi-score", odi, when=QUESTIONNAIRES)
        if days is not None:
            self.obs("episode-duration", days, when=INTAKE)
        if where is not None:
            self.obs("symptom-distribution", where)

    def startback(self, *agree: int) -> None:
        """The nine STarT Back items (the totals are computed from them); ``agree`` lists
        the items answered "agree" (item 9: "very much" or "extremely")."""
        for i in range(1, 10):
            self.obs(f"startback-item-{i}", i in agree, when=QUESTIONNAIRES)

    def fms(self, *, painful_clearing: tuple[str, ...] = (), **scores: Any) -> None:
        """A full functional movement screen, scored per side, with the three clearing
        tests; no test increased the low back pain unless a clearing test was painful."""
        self.movement_screen(**scores)
        self.obs("clear-shoulder", left=False, right=False, when=SCREENED)
        for test in ("clear-spinal-extension", "clear-spinal-flexion"):
            self.obs(test, test in painful_clearing, when=SCREENED)

    def pattern(self, fact: str, score: int | None = None, *, provoked: bool = False,
                left: int | None = None, right: int | None = None) -> None:
        """A loaded pattern (squat, hinge, lateral bend) and whether it increased LBP."""
        self.obs(fact, score, left=left, right=right, provoked=provoked, when=SCREENED)

    def condition(self, fact: str, *, onset: str, cid: str | None = None,
                  clinical: str = "active", verification: str = "confirmed",
                  recorded: str | None = INTAKE) -> dict[str, Any]:
        return super().condition(fact, onset=onset, cid=cid, clinical=clinical,
                                 verification=verification, recorded=recorded)


def registry(table: dict[str, Callable[[], Any]]) -> Callable[[Callable[[str], Any]],
                                                              Callable[[str], Any]]:
    """A decorator that registers a case in ``table``; its file name is the function name
    with dashes (the scenario generators next to this one use it too)."""
    def register(fn: Callable[[str], Any]) -> Callable[[str], Any]:
        name = fn.__name__.replace("_", "-")
        assert name not in table, name
        table[name] = lambda: fn(name)
        return fn
    return register


def render(cases: dict[str, Callable[[], Any]], *, indent: int) -> dict[str, str]:
    """File name -> exact file text (sorted keys) of every case's Bundle."""
    return {f"{name}.json": json.dumps(make().bundle(), indent=indent, sort_keys=True,
                                       ensure_ascii=False) + "\n"
            for name, make in sorted(cases.items())}


def sync(here: Path, files: dict[str, str], argv: list[str], *, prune: bool) -> int:
    """Write ``files`` into ``here`` (``prune``: and delete the JSON files no case writes);
    with ``--check`` in ``argv`` write nothing and exit 1 if any is stale or extra."""
    stale = sorted(f for f, text in files.items()
                   if not (here / f).is_file() or (here / f).read_text(encoding="utf-8") != text)
    extra = sorted(p.name for p in here.glob("*.json") if p.name not in files)
    if "--check" in argv:
        if stale:
            print(f"out of date (run python {here.relative_to(ROOT)}/_generate.py):",
                  ", ".join(stale))
        if extra:
            print("no case writes:", ", ".join(extra))
        return 1 if stale or extra else 0
    for fname in stale:
        (here / fname).write_text(files[fname], encoding="utf-8")
    for fname in extra if prune else ():
        (here / fname).unlink()
    return 0


VIGNETTES: dict[str, Callable[[], Any]] = {}
vignette = registry(VIGNETTES)


# ===========================================================================================
# Red flags, under-triage guards: each pathway from its minimal presentation
# ===========================================================================================

@vignette
def ces_new_urinary_hesitancy(name: str) -> Vignette:
    """47-year-old woman, 9 days of LBP with pain above the right knee, reports new
    difficulty starting to pass urine. Every other red-flag answer is no and her movement
    screen is good: one sphincter symptom alone is suspected cauda equina syndrome."""
    b = Vignette(name, birth_date="1979-05-16", gender="female")
    b.red_flags("rf-bladder-dysfunction")
    b.pain(6, odi=34.0, days=9.0, where="above-knee")
    b.obs("myotome-strength", left=5, right=5)
    b.fms(squat=3, hurdle=(3, 3), lunge=(3, 3), aslr=(3, 3), pushup=3, rotary=(2, 2))
    return b


@vignette
def ces_saddle_numbness_alone(name: str) -> Vignette:
    """36-year-old man, 3 weeks of back-only pain, new numbness 'where he sits' (saddle),
    bladder and bowel normal so far. Saddle anaesthesia alone is suspected CES."""
    b = Vignette(name, birth_date="1990-02-03", gender="male")
    b.red_flags("rf-saddle-anaesthesia")
    b.pain(4, odi=22.0, days=21.0, where="back-only")
    return b


@vignette
def ces_bilateral_sciatica_with_weakness(name: str) -> Vignette:
    """43-year-old man, 2 weeks of sciatica now in both legs; bladder, bowel and saddle
    answered no, but both ankles measure 4/5. Bilateral radicular pain with a motor deficit
    is suspected CES even without sphincter symptoms."""
    b = Vignette(name, birth_date="1983-08-21", gender="male")
    b.red_flags("rf-bilateral-leg-symptoms")
    b.pain(7, days=14.0, where="both-legs")
    b.obs("myotome-strength", left=4, right=4)
    return b


@vignette
def foot_drop_new(name: str) -> Vignette:
    """44-year-old woman, 4 weeks of left leg pain below the knee; since yesterday her left
    foot slaps and catches (new foot drop). No other red flag: same-day spinal review."""
    b = Vignette(name, birth_date="1982-03-09", gender="female")
    b.red_flags("rf-foot-drop")
    b.pain(5, odi=38.0, days=28.0, where="below-knee")
    return b


@vignette
def fever_iv_drug_use(name: str) -> Vignette:
    """33-year-old man who injects drugs, 10 days of new constant back pain with fevers and
    rigors. Fever with an infection risk factor: possible spinal infection, emergency."""
    b = Vignette(name, birth_date="1993-06-30", gender="male")
    b.red_flags("rf-fever", "rf-iv-drug-use")
    b.pain(8, days=10.0, where="back-only")
    return b


@vignette
def cancer_history_new_back_pain(name: str) -> Vignette:
    """61-year-old woman treated for breast cancer 4 years ago (in remission), 3 weeks of
    new back-only pain, no leg symptoms or weakness. Cancer history with new spinal pain:
    urgent imaging within 2 weeks, no exercise meanwhile, but not the MSCC emergency."""
    b = Vignette(name, birth_date="1965-01-12", gender="female")
    b.red_flags("rf-cancer-history")
    b.pain(5, odi=26.0, days=21.0, where="back-only")
    b.obs("myotome-strength", left=5, right=5)
    b.condition("condition-cancer", onset="2022-03-01", clinical="remission")
    return b


@vignette
def cancer_history_radicular_pain_mscc(name: str) -> Vignette:
    """58-year-old man with prostate cancer on hormone therapy (active problem), 2 weeks of
    back pain now shooting below the left knee. Cancer history with radicular pain:
    suspected metastatic spinal cord compression, same-day MSCC pathway."""
    b = Vignette(name, birth_date="1968-04-25", gender="male")
    b.red_flags("rf-cancer-history")
    b.pain(6, days=14.0, where="below-knee")
    b.condition("condition-cancer", onset="2025-09-10")
    return b


@vignette
def osteoporosis_minor_fall(name: str) -> Vignette:
    """66-year-old woman with osteoporosis slipped on a wet floor and sat down hard 5 days
    ago; new back pain 6/10 since. Minor trauma with osteoporosis: possible vertebral
    fracture, urgent imaging, exercise and loaded bending wait."""
    b = Vignette(name, birth_date="1960-07-19", gender="female")
    b.red_flags("rf-significant-trauma")
    b.pain(6, days=5.0, where="back-only")
    b.condition("condition-osteoporosis", onset="2021-11-15")
    return b


@vignette
def pulsatile_abdominal_mass(name: str) -> Vignette:
    """71-year-old man, smoker with hypertension, 2 days of new deep central back pain; a
    pulsatile mass is felt in his abdomen. Possible leaking aneurysm: call an ambulance."""
    b = Vignette(name, birth_date="1955-05-05", gender="male")
    b.red_flags("rf-pulsatile-abdominal-mass")
    b.pain(7, days=2.0, where="back-only")
    return b


# ===========================================================================================
# Red flags, over-triage guards: one weak flag alone is watchful waiting, not a referral
# ===========================================================================================

@vignette
def night_pain_alone(name: str) -> Vignette:
    """42-year-old woman, 7 weeks of back-only pain that wakes her and does not ease with
    changing position. No other flag: watch and safety-net, exercise goes ahead."""
    b = Vignette(name, birth_date="1984-09-14", gender="female")
    b.red_flags("rf-night-pain")
    b.pain(4, odi=24.0, days=49.0, where="back-only")
    b.fms(rotary=(1, 2))
    return b


@vignette
def age_alone(name: str) -> Vignette:
    """57-year-old woman, 6 months of back-only pain, every red-flag answer no. Age over 50
    is a weak flag on its own: information only."""
    b = Vignette(name, birth_date="1969-03-27", gender="female")
    b.red_flags()
    b.pain(4, odi=26.0, days=180.0, where="back-only")
    return b


@vignette
def weight_loss_alone(name: str) -> Vignette:
    """39-year-old man, 8 weeks of back pain after a house move, has lost 4 kg without
    trying during a stressful month. Weight loss alone is a watch, not a referral."""
    b = Vignette(name, birth_date="1987-10-08", gender="male")
    b.red_flags("rf-unexplained-weight-loss")
    b.pain(3, odi=18.0, days=56.0, where="back-only")
    return b


@vignette
def sexual_dysfunction_alone(name: str) -> Vignette:
    """44-year-old man, 6 weeks of LBP with pain into the right thigh, mentions new erectile
    difficulty; bladder, bowel and saddle sensation normal, strength normal. Unlikely CES
    alone: re-ask and safety-net, no emergency."""
    b = Vignette(name, birth_date="1982-12-01", gender="male")
    b.red_flags("rf-sexual-dysfunction")
    b.pain(4, odi=28.0, days=42.0, where="above-knee")
    b.obs("myotome-strength", left=5, right=5)
    return b


@vignette
def bilateral_leg_symptoms_no_deficit(name: str) -> Vignette:
    """35-year-old woman, 10 weeks of LBP with aching into both thighs; strength 5/5 on
    both sides, bladder, bowel and saddle answered no. Bilateral symptoms without a deficit
    are a CES warning to re-ask, not an emergency."""
    b = Vignette(name, birth_date="1991-04-18", gender="female")
    b.red_flags("rf-bilateral-leg-symptoms")
    b.pain(4, odi=30.0, days=70.0, where="both-legs")
    b.obs("myotome-strength", left=5, right=5)
    return b


# ===========================================================================================
# Precautions: vetoes on what may be proposed
# ===========================================================================================

@vignette
def flexion_peripheralizes(name: str) -> Vignette:
    """29-year-old man, 5 weeks of left sciatica below the knee; repeated flexion sends the
    pain further down the leg, repeated extension changes nothing; the leg raise is poor on
    the left. No flexion exercise may be proposed."""
    b = Vignette(name, birth_date="1997-01-22", gender="male")
    b.red_flags()
    b.pain(5, odi=30.0, days=35.0, where="below-knee")
    b.obs("repeated-flexion-response", "peripheralizes")
    b.obs("repeated-extension-response", "no-effect")
    b.obs("myotome-strength", left=5, right=5)
    b.fms(aslr=(1, 2))
    return b


@vignette
def extension_peripheralizes(name: str) -> Vignette:
    """63-year-old woman, 4 months of leg pain below the knee when standing and walking
    (stenosis-like); repeated extension sends it further down the leg, repeated flexion
    centralises it. Flexion-biased work; no extension exercise may be proposed."""
    b = Vignette(name, birth_date="1963-06-11", gender="female")
    b.red_flags()
    b.pain(5, odi=32.0, days=120.0, where="below-knee")
    b.obs("repeated-extension-response", "peripheralizes")
    b.obs("repeated-flexion-response", "centralizes")
    b.obs("directional-preference", "flexion")
    b.obs("myotome-strength", left=5, right=5)
    b.fms(aslr=(1, 2))
    return b


@vignette
def osteoporosis_no_loaded_bending(name: str) -> Vignette:
    """62-year-old woman with osteoporosis, a year of mild back-only pain (2/10, ODI 12),
    good hinge, painless but uneven loaded side bend: function-optimisation work, but no
    loaded forward bending or twisting."""
    b = Vignette(name, birth_date="1964-02-29", gender="female")
    b.red_flags()
    b.pain(2, odi=12.0, days=365.0, where="back-only")
    b.fms(squat=3, hurdle=(3, 3), lunge=(3, 3), pushup=3, rotary=(2, 2))
    b.pattern("pattern-hinge", 3)
    b.pattern("pattern-squat", 3)
    b.pattern("pattern-lateral-bend", left=3, right=1)
    b.condition("condition-osteoporosis", onset="2023-05-02")
    return b


@vignette
def pregnancy_no_unstable_surface(name: str) -> Vignette:
    """31-year-old woman, 20 weeks pregnant, 10 weeks of low back and pelvic pain (2/10),
    good trunk control on the screen. No unstable-surface (fall-risk) exercise; pregnancy
    cautions and warning signs."""
    b = Vignette(name, birth_date="1995-08-08", gender="female")
    b.red_flags()
    b.pain(2, odi=14.0, days=70.0, where="back-only")
    b.fms(squat=3, hurdle=(3, 3), lunge=(3, 3), aslr=(3, 3), pushup=3, rotary=(2, 2))
    b.condition("condition-pregnancy", onset="2026-06-14")
    return b


@vignette
def known_aaa_no_external_load(name: str) -> Vignette:
    """68-year-old man with a known 4.2 cm abdominal aortic aneurysm under surveillance,
    8 months of back-only pain (3/10), abdomen examined without a pulsatile mass, good
    hinge and squat. Back pain with a known aneurysm is examined urgently; weights and
    bands (Valsalva) are held back for review."""
    b = Vignette(name, birth_date="1958-03-03", gender="male")
    b.red_flags()
    b.pain(3, odi=16.0, days=240.0, where="back-only")
    b.fms(squat=3, hurdle=(3, 3), lunge=(3, 3), pushup=3, rotary=(2, 2))
    b.pattern("pattern-hinge", 3)
    b.pattern("pattern-squat", 3)
    b.condition("condition-aaa", onset="2024-01-20")
    return b


@vignette
def older_adult_poor_balance(name: str) -> Vignette:
    """69-year-old man, 2 years of back-only pain (3/10), good trunk control but hurdle step
    1 on the left (poor single-leg balance), abdomen examined without a mass. Unstable
    surfaces only with support: none in the plan."""
    b = Vignette(name, birth_date="1957-07-07", gender="male")
    b.red_flags()
    b.pain(3, odi=18.0, days=730.0, where="back-only")
    b.fms(hurdle=(1, 2), lunge=(2, 2), aslr=(2, 2), pushup=3, rotary=(2, 2))
    return b


# ===========================================================================================
# Stratification (STarT Back, PHQ-2)
# ===========================================================================================

@vignette
def startback_low_minimal_programme(name: str) -> Vignette:
    """34-year-old woman, 3 weeks of back-only pain (3/10), STarT Back 2/9 (low risk); her
    screen shows several deficits (rotary stability, leg raise, hurdle step, hinge) that
    would each add an exercise. Low risk: a minimal programme of at most 3."""
    b = Vignette(name, birth_date="1992-11-30", gender="female")
    b.red_flags()
    b.pain(3, odi=16.0, days=21.0, where="back-only")
    b.startback(1, 4)
    b.fms(hurdle=(3, 1), aslr=(1, 2), rotary=(1, 1), pushup=1)
    b.pattern("pattern-hinge", 1)
    return b


@vignette
def startback_high_psychologically_informed(name: str) -> Vignette:
    """46-year-old man, 9 months of back-only pain (5/10), STarT Back 7/9 with a
    psychosocial subscale of 5 (fearful, worried, catastrophising, low, very bothered).
    High risk: same exercise plan with a psychologically informed approach, routine
    referral to a combined physical and psychological programme."""
    b = Vignette(name, birth_date="1980-05-25", gender="male")
    b.red_flags()
    b.pain(5, odi=36.0, days=270.0, where="back-only")
    b.startback(1, 2, 5, 6, 7, 8, 9)
    return b


@vignette
def phq2_positive(name: str) -> Vignette:
    """40-year-old woman, 5 months of back-only pain, PHQ-2 of 4 (little interest, feeling
    down most days). Positive screen: suggest a PHQ-9 or mood review, exercise continues."""
    b = Vignette(name, birth_date="1986-01-17", gender="female")
    b.red_flags()
    b.pain(4, odi=28.0, days=150.0, where="back-only")
    b.obs("phq2-total", 4, when=QUESTIONNAIRES)
    return b


# ===========================================================================================
# Classification: which direction and family of exercise
# ===========================================================================================

@vignette
def extension_preference_leads(name: str) -> Vignette:
    """27-year-old man, 7 weeks of LBP with pain into the right buttock and thigh; repeated
    extension centralises it, repeated flexion makes no difference (extension directional
    preference). Matched repeated extension comes first."""
    b = Vignette(name, birth_date="1999-10-02", gender="male")
    b.red_flags()
    b.pain(4, odi=26.0, days=49.0, where="above-knee")
    b.obs("repeated-extension-response", "centralizes")
    b.obs("repeated-flexion-response", "no-effect")
    b.obs("directional-preference", "extension")
    return b


@vignette
def hicks_positive_motor_control(name: str) -> Vignette:
    """32-year-old woman with recurrent back-only pain, straight-leg raise 95 degrees each
    side, a painful arc on bending (aberrant movement) and a positive prone instability
    test: Hicks rule positive, a motor-control programme is likely to help."""
    b = Vignette(name, birth_date="1994-03-15", gender="female")
    b.red_flags()
    b.pain(4, odi=24.0, days=60.0, where="back-only")
    b.obs("slr-angle", left=95.0, right=94.0)
    b.obs("aberrant-movement", True)
    b.obs("prone-instability-test", True)
    return b


@vignette
def chronic_lbp_trunk_strengthening(name: str) -> Vignette:
    """45-year-old man, 7 months of back-only pain (4/10), no screen deficits recorded.
    Chronic LBP: trunk strengthening/endurance and general exercise (JOSPT grade A)."""
    b = Vignette(name, birth_date="1981-08-09", gender="male")
    b.red_flags()
    b.pain(4, odi=26.0, days=210.0, where="back-only")
    return b


@vignette
def older_adult_walking(name: str) -> Vignette:
    """72-year-old man, 3 years of back-only pain (3/10), abdomen examined without a mass.
    Older adult with chronic LBP: general exercise, a graded walking programme."""
    b = Vignette(name, birth_date="1954-02-14", gender="male")
    b.red_flags()
    b.pain(3, odi=20.0, days=1095.0, where="back-only")
    return b


@vignette
def chronic_low_demand_keeps_walking(name: str) -> Vignette:
    """48-year-old woman, 2 years of mild back-only pain (2/10, ODI 10), good hinge and
    squat: function-optimisation loading work, but general exercise for chronic LBP (JOSPT
    grade A) is not displaced by it."""
    b = Vignette(name, birth_date="1978-09-03", gender="female")
    b.red_flags()
    b.pain(2, odi=10.0, days=730.0, where="back-only")
    b.fms(squat=3, hurdle=(3, 3), lunge=(3, 3), aslr=(3, 3), pushup=3, rotary=(2, 2))
    b.pattern("pattern-hinge", 3)
    b.pattern("pattern-squat", 3)
    return b


# ===========================================================================================
# Movement screen: the drill that answers the finding
# ===========================================================================================

@vignette
def rotary_stability_deficit(name: str) -> Vignette:
    """38-year-old woman, 6 weeks of back-only pain (3/10), cannot keep her trunk steady
    in the rotary stability test on either side (1/1): quadruped motor control."""
    b = Vignette(name, birth_date="1988-06-06", gender="female")
    b.red_flags()
    b.pain(3, odi=18.0, days=45.0, where="back-only")
    b.fms(rotary=(1, 1))
    return b


@vignette
def aslr_deficit(name: str) -> Vignette:
    """30-year-old man, 8 weeks of back-only pain, active straight-leg raise 1 on the left
    (pelvis rolls with the leg): lumbopelvic control and hip dissociation."""
    b = Vignette(name, birth_date="1996-09-19", gender="male")
    b.red_flags()
    b.pain(3, odi=20.0, days=56.0, where="back-only")
    b.fms(aslr=(1, 3))
    return b


@vignette
def hurdle_step_asymmetry(name: str) -> Vignette:
    """26-year-old woman, recreational runner, 7 weeks of back-only pain; hurdle step 3 on
    the left and 1 on the right. Marked asymmetry: single-leg stance work on each side."""
    b = Vignette(name, birth_date="2000-05-01", gender="female")
    b.red_flags()
    b.pain(3, odi=14.0, days=49.0, where="back-only")
    b.fms(hurdle=(3, 1), lunge=(2, 2))
    return b


@vignette
def poor_hinge(name: str) -> Vignette:
    """41-year-old man, removals worker, 10 weeks of back-only pain (2/10, ODI 10); his
    loaded hip hinge is poor (rounds through the low back, score 1) without increasing the
    pain. Dowel hinge retraining before any loaded hinge."""
    b = Vignette(name, birth_date="1985-12-12", gender="male")
    b.red_flags()
    b.pain(2, odi=10.0, days=70.0, where="back-only")
    b.pattern("pattern-hinge", 1)
    return b


# ===========================================================================================
# Data quality: missing, withdrawn, stale and invalid answers
# ===========================================================================================

@vignette
def red_flags_unanswered(name: str) -> Vignette:
    """45-year-old woman, 8 weeks of back-only pain; the intake form skipped the fever,
    cancer-history and trauma questions. Unanswered is never read as no: the plan names the
    three questions, and exercise may still be proposed."""
    b = Vignette(name, birth_date="1981-02-20", gender="female")
    b.red_flags(omit=("rf-fever", "rf-cancer-history", "rf-significant-trauma"))
    b.pain(4, odi=24.0, days=56.0, where="back-only")
    return b


@vignette
def entered_in_error_bladder_flag(name: str) -> Vignette:
    """37-year-old man, 6 weeks of back-only pain. A 'yes' to bladder dysfunction was
    recorded against him by mistake and marked entered-in-error (after his real answer,
    'no'). The withdrawn answer must not trigger the CES pathway."""
    b = Vignette(name, birth_date="1989-07-27", gender="male")
    b.red_flags()
    b.obs("rf-bladder-dysfunction", True, status="entered-in-error",
          oid="obs-rf-bladder-dysfunction-entered-in-error", when="2026-11-01T09:45:00Z")
    b.pain(3, odi=18.0, days=42.0, where="back-only")
    return b


@vignette
def stale_red_flag_answer(name: str) -> Vignette:
    """52-year-old woman, 10 weeks of back-only pain. Her cancer-history answer ('no') was
    given at a visit 23 days ago and not re-asked today: older than 14 days, it counts as
    unanswered and the plan asks for it again."""
    b = Vignette(name, birth_date="1974-10-10", gender="female")
    b.red_flags(omit=("rf-cancer-history",))
    b.obs("rf-cancer-history", False, when="2026-10-10T10:00:00Z")
    b.pain(3, odi=20.0, days=70.0, where="back-only")
    return b


@vignette
def invalid_pain_score(name: str) -> Vignette:
    """33-year-old woman, 9 weeks of back-only pain; the pain score was typed as 14 on a
    0-10 scale. The value is not used, it is reported, and pain counts as missing."""
    b = Vignette(name, birth_date="1993-01-05", gender="female")
    b.red_flags()
    b.pain(14, odi=24.0, days=63.0, where="back-only")
    return b


# ===========================================================================================
# Full, realistic presentations
# ===========================================================================================

@vignette
def full_warehouse_worker_flexion_sciatica(name: str) -> Vignette:
    """54-year-old man, warehouse picker, chronic LBP 5 months with pain below the right
    knee; repeated flexion peripheralises, repeated extension centralises (extension
    preference); SLR 50 degrees right, strength 5/5; STarT Back medium (5/9, psychosocial
    2); PHQ-2 1; full FMS with rotary stability 1 on the right; loaded hinge aberrant and
    painful. Extension leads, no flexion, no referral."""
    b = Vignette(name, birth_date="1972-04-04", gender="male")
    b.red_flags()
    b.pain(5, odi=34.0, days=150.0, where="below-knee")
    b.startback(1, 2, 3, 5, 9)
    b.obs("phq2-total", 1, when=QUESTIONNAIRES)
    b.obs("repeated-flexion-response", "peripheralizes")
    b.obs("repeated-extension-response", "centralizes")
    b.obs("directional-preference", "extension")
    b.obs("slr-angle", left=80.0, right=50.0)
    b.obs("myotome-strength", left=5, right=5)
    b.obs("aberrant-movement", False)
    b.obs("prone-instability-test", False)
    b.fms(squat=2, hurdle=(2, 2), lunge=(2, 2), shoulder=(2, 2), aslr=(2, 1), pushup=2,
          rotary=(2, 1))
    b.pattern("pattern-hinge", 1, provoked=True)
    b.condition("condition-sciatica", onset="2026-06-01")
    return b


@vignette
def full_office_worker_high_risk(name: str) -> Vignette:
    """38-year-old woman, software developer, 14 months of back-only pain (5/10, ODI 32);
    STarT Back 6/9 with psychosocial 4 (high risk); PHQ-2 3; Hicks items: age under 40,
    aberrant movement, positive prone instability test; FMS: push-up 1, rotary stability
    1/1, leg raise 1/2; hinge poor. Motor control with a psychologically informed approach
    and a mood review; no red flags."""
    b = Vignette(name, birth_date="1988-03-22", gender="female")
    b.red_flags()
    b.pain(5, odi=32.0, days=420.0, where="back-only")
    b.startback(1, 3, 5, 6, 7, 8)
    b.obs("phq2-total", 3, when=QUESTIONNAIRES)
    b.obs("slr-angle", left=85.0, right=88.0)
    b.obs("aberrant-movement", True)
    b.obs("prone-instability-test", True)
    b.obs("directional-preference", "none")
    b.fms(squat=2, hurdle=(2, 2), lunge=(2, 2), aslr=(1, 2), pushup=1, rotary=(1, 1))
    b.pattern("pattern-hinge", 1)
    b.condition("condition-chronic-low-back-pain", onset="2025-09-01")
    return b


@vignette
def full_osteoporotic_woman_new_severe_pain(name: str) -> Vignette:
    """67-year-old woman with osteoporosis on alendronate, no fall or lift she can recall,
    10 days of new severe mid-low back pain (8/10). Female with osteoporosis and new severe
    pain: two fracture risk factors, urgent imaging; no exercise until it is excluded."""
    b = Vignette(name, birth_date="1959-08-30", gender="female")
    b.red_flags()
    b.pain(8, days=10.0, where="back-only")
    b.condition("condition-osteoporosis", onset="2020-02-11")
    return b


@vignette
def full_acute_lifting_strain(name: str) -> Vignette:
    """28-year-old man lifted a sofa 6 days ago; back-only pain 7/10, ODI 44, no red flags,
    no directional preference found, STarT Back 3/9 (low). Symptom modulation: calm it
    down and keep moving, a minimal programme, no referral."""
    b = Vignette(name, birth_date="1998-04-11", gender="male")
    b.red_flags()
    b.pain(7, odi=44.0, days=6.0, where="back-only")
    b.startback(1, 2, 4)
    b.obs("repeated-flexion-response", "no-effect")
    b.obs("repeated-extension-response", "no-effect")
    b.obs("directional-preference", "none")
    return b


# ===========================================================================================

def main(argv: list[str]) -> int:
    return sync(HERE, render(VIGNETTES, indent=2), argv, prune=False)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
