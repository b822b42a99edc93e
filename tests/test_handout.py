"""The patient handout page (movement_cds.handout_html / handout_pdf and `movement-cds
handout`): what it says, what it never says, its reading age, and the PDF."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import movement_cds
from cds import Evaluator, Fact, PatientFacts, load_knowledge_base
from fhir_adapters import InvalidBundleError, input_codes, write_bundle
from knowledge_base import bundled_path
from movement_cds._handout import LOG_COLUMNS, _session_days
from movement_cds._handout_model import HandoutDose
from tests.patients import AS_OF as FACTS_AS_OF
from tests.patients import CLEAR_RED_FLAGS, fact_strategy, patient_strategy
from tests.readability import flesch_kincaid_grade, visible_text

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
AS_OF = "2026-11-02T09:00:00Z"
SCREEN = "http://movement-cds.org/fhir/CodeSystem/screen"
KB = load_knowledge_base(bundled_path())


def _example(name: str = "example-patient.json") -> tuple[movement_cds.Evaluation, str]:
    result = movement_cds.evaluate((EXAMPLES / name).read_bytes(), as_of=AS_OF)
    return result, movement_cds.handout_html(result)


def _dose(activity: dict) -> dict:
    ext = next(e for e in activity["detail"]["extension"] if e["url"].endswith("exercise-dose"))
    return {s["url"]: s.get("valueInteger", s.get("valueQuantity", {}).get("value"))
            for s in ext["extension"]}


def test_each_exercise_has_its_page_picture_dose_feel_and_stop() -> None:
    result, html = _example()
    careplan = result.bundle["entry"][0]["resource"]
    exercises = [a for a in careplan["activity"]
                 if a.get("detail", {}).get("code", {}).get("coding", [{}])[0].get("system", "")
                 .endswith("/exercise")]
    assert len(exercises) == 3
    for n, a in enumerate(exercises, 1):
        code = a["detail"]["code"]["coding"][0]["code"]
        section = re.search(rf'<section class="exercise" id="exercise-{code}">(.*?)</section>',
                            html, re.S)
        assert section, code
        text = section.group(1)
        assert f"Exercise {n}: {KB.exercises[code].title}" in text
        assert text.count("<svg") == 1 and 'class="exercise-figure"' in text
        dose = _dose(a)
        assert f"<b>Sets:</b> {dose['sets']}<" in text
        assert f"<b>Each set:</b> {dose['repetitions']} times" in text
        for heading in ("How to do it", "How much", "What you should feel", "When to stop"):
            assert f"<h3>{heading}</h3>" in text
        feel = re.search(r"What you should feel</h3><p>(.*?)</p>", text).group(1)
        assert feel.startswith("You should feel") and feel in KB.exercises[code].instructions


def test_no_clinician_material_and_no_patient_identifiers() -> None:
    result, html = _example()
    text = html.replace("&#x27;", "'")
    for rule in KB.rules:
        assert rule.id not in text, rule.id
    for marker in ("PMID", "PMC", "GUIDELINE:", "Observation/", "urn:uuid", "Patient/",
                   "example-patient", "movement-cds-lbp", "evidence"):
        assert marker not in text, marker
    for resource in (e["resource"] for e in result.bundle["entry"]):
        assert resource["id"] not in text


@pytest.mark.slow
def test_reading_age_of_the_example_patients_handout(tmp_path_factory: pytest.TempPathFactory
                                                      ) -> None:
    """Flesch-Kincaid grade 7 or below (a reading age of about 12); measured 5.8."""
    _, html = _example()
    grade = flesch_kincaid_grade(visible_text(html), tmp_path_factory.mktemp("nltk"))
    assert grade <= 7.0, grade


def test_the_pain_guide_uses_the_knowledge_bases_thresholds() -> None:
    _, html = _example()
    assert "<b>Green<br>0 to 2</b>" in html and "<b>Amber<br>3 to 5</b>" in html
    assert "<b>Red<br>6 to 10</b>" in html
    support = movement_cds.DecisionSupport(parameters={"follow-up-pain-acceptable-max": 4,
                                                       "follow-up-pain-safe-max": 1})
    changed = movement_cds.handout_html((EXAMPLES / "example-patient.json").read_bytes(),
                                        as_of=AS_OF, support=support)
    assert "<b>Green<br>0 to 1</b>" in changed and "<b>Amber<br>2 to 4</b>" in changed
    assert "<b>Red<br>5 to 10</b>" in changed


def test_held_exercise_says_so_and_gives_no_exercises() -> None:
    _, html = _example("cauda-equina.json")
    assert "Do not start any exercises for now." in html
    assert "Go to an emergency department today." in html
    assert 'class="exercise"' not in html and "<svg" not in html
    assert 'id="log"' not in html and 'id="week"' not in html
    assert "you cannot pee" in html  # the cauda equina emergency symptoms


def test_the_log_columns_are_the_follow_up_response_codes() -> None:
    _, html = _example()
    coded = re.findall(r'<th data-code="([a-z-]+)">', html)
    assert coded == [code for _, code in LOG_COLUMNS]
    readable = {code for system, code in input_codes(KB).observations if system == SCREEN}
    assert set(coded) <= readable
    assert set(coded) == {"exercise-pain-during", "exercise-pain-next-morning",
                          "exercise-sessions-done", "exercise-peripheralization",
                          "exercise-perceived-effect"}
    # one row per exercise to fill in
    assert len(re.findall(r"<tr><th>[^<]+</th>(?:<td></td>){5}</tr>", html)) == 3


def test_a_follow_up_handout_says_what_changed() -> None:
    bundle = json.loads((EXAMPLES / "follow-up" / "visit-2-output.json").read_text())
    html = movement_cds.handout_html(bundle)
    assert "your new exercise plan" in html
    changes = re.findall(r"<b>What has changed:</b> ([^<]+)</p>", html)
    patient_texts = [s["valueString"] for e in bundle["entry"]
                     if e["resource"]["resourceType"] == "CarePlan"
                     for a in e["resource"]["activity"]
                     for x in a.get("detail", {}).get("extension", [])
                     if x["url"].endswith("exercise-change")
                     for s in x["extension"] if s["url"] == "patient-text"]
    assert changes and all(c.replace("&#x27;", "'") in patient_texts for c in changes)


def test_an_input_bundle_and_its_output_bundle_give_the_same_page() -> None:
    result, html = _example()
    assert movement_cds.handout_html(result.bundle) == html
    assert movement_cds.handout_html(json.dumps(result.bundle)) == html
    assert movement_cds.handout_html((EXAMPLES / "example-patient.json").read_bytes(),
                                     as_of=AS_OF) == html


@pytest.mark.parametrize("source,as_of,says", [
    ("input", None, "this is an input Bundle: give the as-of instant"),
    ("output", AS_OF, "as-of applies to an input Bundle"),
    ('{"resourceType": "Bundle", "type": "collection", "entry": []}', None,
     "neither an input Bundle"),
    ('{"resourceType": "Patient"}', None, "not a FHIR Bundle"),
    ("{", None, "not JSON"),
])
def test_wrong_input_is_a_clear_error(source: str, as_of: str | None, says: str) -> None:
    result, _ = _example()
    data = {"input": (EXAMPLES / "example-patient.json").read_bytes(),
            "output": result.bundle}.get(source, source)
    with pytest.raises(InvalidBundleError) as e:
        movement_cds.handout_html(data, as_of=as_of)
    assert says in e.value.issues[0].message


@given(st.integers(1, 7), st.integers(1, 3), st.sampled_from(["d", "wk"]))
def test_the_week_grid_holds_the_prescribed_sessions(freq: int, period: int, unit: str) -> None:
    days = _session_days(HandoutDose(None, 10, None, None, None, freq, period, unit))
    assert set(days) <= set(range(7))
    if unit == "d":
        assert sum(days.values()) == freq * len(range(0, 7, period))
    else:
        assert sum(days.values()) == max(1, min(7, round(freq / period)))
    assert all(n >= 1 for n in days.values())


def _cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    code = f"from movement_cds._cli import main; main({list(args)!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT,
                          timeout=120, check=False)


@pytest.mark.slow
def test_cli_html_and_errors(tmp_path: Path) -> None:
    out = tmp_path / "h.html"
    r = _cli("handout", str(EXAMPLES / "example-patient.json"), "--as-of", AS_OF,
             "--out", str(out))
    assert r.returncode == 0, r.stderr.decode()
    assert out.read_text() == _example()[1]
    r = _cli("handout", str(EXAMPLES / "example-patient.json"), "--out", str(out))
    assert r.returncode == 2 and b"give the as-of instant" in r.stderr
    assert json.loads(r.stdout)["resourceType"] == "OperationOutcome"
    r = _cli("handout", str(EXAMPLES / "example-patient.json"), "--as-of", AS_OF,
             "--out", str(tmp_path / "h.txt"))
    assert r.returncode == 1 and b"must end in .html or .pdf" in r.stderr


def test_pdf_without_the_extra_says_which_extra_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As without the extra installed: ``import weasyprint`` fails. (The command line's message
    in a venv without the extra is checked by `make base-install-check`.)"""
    _, html = _example()
    monkeypatch.setitem(sys.modules, "weasyprint", None)  # import raises ImportError
    with pytest.raises(movement_cds.HandoutExtraMissingError) as e:
        movement_cds.handout_pdf(html)
    assert "pip install 'movement-cds[handout]'" in str(e.value)
    assert isinstance(e.value, ImportError) and isinstance(e.value, movement_cds.MovementCDSError)


@pytest.mark.slow
def test_pdf_has_a_page_per_section_with_its_text(tmp_path: Path) -> None:
    pypdf = pytest.importorskip("pypdf")
    pytest.importorskip("weasyprint")
    out = tmp_path / "h.pdf"
    r = _cli("handout", str(EXAMPLES / "example-patient.json"), "--as-of", AS_OF,
             "--out", str(out))
    assert r.returncode == 0, r.stderr.decode()
    pages = [" ".join((p.extract_text() or "").split()) for p in pypdf.PdfReader(out).pages]
    titles = [KB.exercises[x].title for x in ("abdominal-bracing-supine", "bird-dog-breathing",
                                               "dead-bug-eccentric")]
    starts = ["Your back exercises", *(f"Exercise {n}: {t}"[:40] for n, t in
                                       enumerate(titles, 1)),
              "Your week", "Your log", "When to stop and get help"]
    assert len(pages) == len(starts)
    for page, start in zip(pages, starts, strict=True):
        assert page.startswith(start), (start, page[:80])
    assert "Green 0 to 2" in pages[0] and "Call an ambulance" in pages[-1]


_REFERENCE = None


# pain, disability, STarT Back, the movement screen and the classification: no red-flag,
# neurological or serious-condition item
_SCREEN_FACTS = re.compile(
    r"(pain-now|odi-score|startback-.*|phq2-total|episode-duration|symptom-distribution|fms-.*|"
    r"pattern-.*|clear-.*|slr-angle|prone-instability-test|aberrant-movement|"
    r"directional-preference|repeated-.*|condition-(chronic-)?low-back-pain|sex)")


def _cleared(facts: list[Fact]) -> PatientFacts:
    """Every red-flag question answered "no" and random screen and classification findings:
    plans that are mostly not held."""
    kept = [f for f in facts if _SCREEN_FACTS.fullmatch(f.name.split(".")[0])]
    cleared = [Fact(n, False, (f"Observation/{n}",))
               for n in {*CLEAR_RED_FLAGS, *(n for n in KB.facts if n.startswith("rf-"))}]
    return PatientFacts.build("Patient/p", FACTS_AS_OF, kept + cleared)


@pytest.mark.parametrize("flag", ["rf-saddle-anaesthesia", "rf-bladder-dysfunction"])
def test_a_held_plan_without_exercises_still_says_do_not_start_and_go_today(flag: str) -> None:
    """A cauda equina "yes" and nothing else: the plan is held with no exercise to put on
    hold, so no activity carries ``on-hold``. The handout used to read "held" from those
    activities only, and told this patient neither to hold exercise nor to go to an
    emergency department today (found by the random-plan property below)."""
    patient = PatientFacts.build("Patient/p", FACTS_AS_OF, [Fact(flag, True, ("Observation/x",))])
    plan = Evaluator(KB, "reference").evaluate(patient)
    assert plan.exercise_held and plan.exercises == ()
    html = movement_cds.handout_html(write_bundle(plan, KB))
    assert "Do not start any exercises for now." in html
    assert "Go to an emergency department today." in html


@settings(max_examples=30, deadline=None)
@given(patient=st.one_of(patient_strategy(KB), fact_strategy(KB).map(_cleared),
                         fact_strategy(KB).map(_cleared)))
def test_any_plans_handout_matches_the_plan_and_holds_no_clinician_material(
        patient: PatientFacts) -> None:
    """Random patients (the fact catalog's ranges) through the reference evaluator and the
    writer: the handout lists exactly the proposed exercises, each with its picture, or, when
    a rule holds exercise, none; never a rule id, evidence id or record reference."""
    global _REFERENCE
    if _REFERENCE is None:
        _REFERENCE = Evaluator(KB, "reference")
    plan = _REFERENCE.evaluate(patient)
    event("held" if plan.exercise_held else f"{len(plan.exercises)} exercises")
    html = movement_cds.handout_html(write_bundle(plan, KB))
    shown = re.findall(r'<section class="exercise" id="exercise-([a-z0-9-]+)">', html)
    if plan.exercise_held:
        assert shown == [] and "Do not start any exercises for now." in html
    else:
        assert shown == [e.exercise_id for e in plan.exercises]
        assert html.count('class="exercise-figure"') == len(shown)
    for rule in {r for e in plan.exercises for r in e.rule_ids} | {
            r for a in plan.alerts for r in a.rule_ids}:
        assert rule not in html
    for marker in ("PMID", "PMC", "GUIDELINE:", "Observation/", "urn:uuid"):
        assert marker not in html
