"""Write the example input Bundles (examples/*.json), deterministically.

    python examples/_generate.py            # rewrite the files next to this script
    python examples/_generate.py --check    # exit 1 if any file is out of date

``examples/follow-up/`` is a three-visit follow-up series made by evaluating each visit with
the bundled knowledge base: ``visit-N.json`` is the input of visit N and
``visit-N-output.json`` its output Bundle. Visit 2's input holds visit 1's output CarePlan
(exactly as it came out) and the patient's response Observations about each of its
exercises; visit 3's input holds visit 2's CarePlan and the responses to it. Each visit
re-asks the red-flag questions. The outputs change whenever the rules do: re-run this script
after a knowledge-base change (``--check`` says when they are stale).

The people are data: ``_people.yaml`` holds each one's Patient and what was recorded (each a
call of fhir_adapters' ``BundleBuilder``). Codes and displays come from the bundled knowledge
base's fact catalog, so the examples stay in step with it. Every file is a FHIR R4 Bundle
of type ``collection`` with one Patient; ids
and ``urn:uuid`` fullUrls are derived from the file and resource names, so regenerating gives
byte-identical files.
"""

from __future__ import annotations

import functools
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cds import load_knowledge_base  # noqa: E402
from fhir_adapters import (  # noqa: E402
    EXERCISE_SYSTEM,
    BundleBuilder,
    exercise_response,
    kind_of,
    patient,
    value_x,
)
from knowledge_base import bundled_path  # noqa: E402

KB = load_knowledge_base(bundled_path())
NAMESPACE = uuid.UUID("6f0b8a52-5d0e-4c36-9a55-0d1e6a3b7c11")
SURVEY_PREFIXES = ("rf-", "startback-", "phq2-", "odi-", "pain-", "episode-", "symptom-")


def example(name: str, patient_id: str, *, birth_date: str, gender: str,
            family: str, given: str) -> BundleBuilder:
    """Resources of one example Bundle, all about one Patient."""
    return BundleBuilder(
        KB, patient(patient_id, mrn=f"MRN-{name}", family=family, given=given, gender=gender,
                    birth_date=birth_date),
        bundle_id=f"example-{name}", namespace=NAMESPACE, key_prefix=f"{name}/",
        timestamp="2026-11-01T10:00:00Z", survey=SURVEY_PREFIXES)


def build(name: str, person: dict[str, Any]) -> BundleBuilder:
    """An example from its entry in _people.yaml: each recorded step a builder call."""
    p = person["patient"]
    b = example(name, p["id"], birth_date=p["born"], gender=p["gender"], family=p["family"],
                given=p["given"])
    b.apply(person["recorded"])
    return b


PEOPLE: dict[str, Any] = YAML(typ="safe", pure=True).load(
    (HERE / "_people.yaml").read_text(encoding="utf-8"))
EXAMPLES: dict[str, Callable[[], BundleBuilder]] = {
    name: functools.partial(build, name, person) for name, person in PEOPLE.items()}


# --- follow-up: three visits ---------------------------------------------------------------

FOLLOW_UP_DIR = "follow-up"
VISITS = (  # (as-of instant, when the answers were recorded)
    ("2026-11-02T11:00:00Z", "2026-11-02T09:30:00Z"),
    ("2026-11-16T11:00:00Z", "2026-11-16T09:30:00Z"),
    ("2026-11-30T11:00:00Z", "2026-11-30T09:30:00Z"),
)
RESPONSE_DISPLAY = {
    "exercise-pain-during": "Pain during the exercise",
    "exercise-pain-next-morning": "Pain the next morning compared with before",
    "exercise-sessions-done": "Sessions done since the last plan",
    "exercise-sessions-prescribed": "Sessions prescribed since the last plan",
    "exercise-perceived-effect": "Patient's sense of effect",
    "exercise-peripheralization": "Leg symptoms spread further during or after",
}
# What the patient reports at visits 2 and 3 about the previous plan's exercises, by their
# place in that plan (1st, 2nd, 3rd): visit 2 - the first went well (progress), the second
# hurt during and the next morning (regress), the third felt fine but was done only half
# the time (hold); visit 3 - the first went well again (progress), the second hurt again
# (the second bad response in a row: swap), and leg symptoms spread with the third (stop).
# (pain during, pain next morning, sessions done, sessions prescribed, perceived effect,
# leg symptoms spread), per exercise; None: not answered
RESPONSE_ITEMS = ("pain-during", "pain-next-morning", "sessions-done", "sessions-prescribed",
                  "perceived-effect", "peripheralization")
RESPONSES: dict[int, tuple[tuple[Any, ...], ...]] = {
    2: ((2, "same", 6, 6, "better", False), (7, "worse", 5, 6, None, False),
        (3, "same", 3, 6, "better", False)),
    3: ((1, "better", 6, 6, "better", False), (6, "worse", 6, 6, None, False),
        (3, "same", 6, 6, "better", True)),
}


def follow_up_patient(visit: int) -> BundleBuilder:
    """The patient's record as the EHR holds it at ``visit`` (earlier answers stay in it)."""
    b = example(f"follow-up-visit-{visit}", "pat-fu", birth_date="1981-02-11",
                gender="female", family="Mensah", given="Efua")
    b.obs("odi-score", 30.0, when="2026-11-02T09:20:00Z")
    b.obs("episode-duration", 150.0, when="2026-11-02T09:20:00Z")
    b.obs("symptom-distribution", "back-only", when="2026-11-02T09:20:00Z")
    for i, agree in enumerate((True, False, False, False, True, False, False, False, False), 1):
        b.obs(f"startback-item-{i}", agree, when="2026-11-02T09:15:00Z")
    b.movement_screen(squat=2, hurdle=(2, 2), lunge=(2, 2), shoulder=(3, 3), aslr=(2, 2), pushup=1,
        rotary=(1, 1), when="2026-11-02T10:00:00Z")
    b.obs("aberrant-movement", True, when="2026-11-02T10:30:00Z")
    b.obs("directional-preference", "none", when="2026-11-02T10:35:00Z")
    b.condition("condition-chronic-low-back-pain", cid="cond-clbp", onset="2026-06-20")
    for v in range(1, visit + 1):  # red flags and pain are asked again at every visit
        when = VISITS[v - 1][1]
        for rf in b.red_flag_questions:
            b.obs(rf, False, when=when, oid=f"obs-v{v}-{rf}")
        b.obs("pain-now", (5, 4, 3)[v - 1], when=when, oid=f"obs-v{v}-pain-now")
    return b


def response(b: BundleBuilder, visit: int, exercise: str, item: str, value: Any) -> None:
    code = f"exercise-{item}"
    b.add(exercise_response(
        item, value_x(kind_of(value), value), exercise, oid=f"r{visit}-{exercise}-{item}"[:64],
        subject=b.subject, when=VISITS[visit - 1][1], category="survey",
        display=RESPONSE_DISPLAY[code], title=KB.exercises[exercise].title))


def follow_up_visits() -> dict[str, dict[str, Any]]:
    """visit-N.json and visit-N-output.json for the three visits (evaluated in turn)."""
    from movement_cds import DecisionSupport

    # the plain-Python reference engine: no native session in this script; the tests check
    # that the command line (durable-rules) gives exactly these outputs
    support = DecisionSupport(bundled_path(), engine="reference")
    out: dict[str, dict[str, Any]] = {}
    previous: dict[str, Any] | None = None
    for visit, (as_of, _) in enumerate(VISITS, 1):
        b = follow_up_patient(visit)
        if previous is not None:
            careplan = next(e for e in previous["entry"]
                            if e["resource"]["resourceType"] == "CarePlan")
            b.resources.append(careplan["resource"])
            exercises = [
                c["code"] for act in careplan["resource"].get("activity", [])
                for c in act.get("detail", {}).get("code", {}).get("coding", [])
                if c["system"] == EXERCISE_SYSTEM and act["detail"].get("status") in (
                    "not-started", "on-hold") and not act["detail"].get("doNotPerform")]
            for exercise, answers in zip(exercises, RESPONSES[visit], strict=False):
                for item, value in zip(RESPONSE_ITEMS, answers, strict=True):
                    if value is not None:
                        response(b, visit, exercise, item, value)
        bundle = b.bundle()
        bundle["timestamp"] = as_of
        if previous is not None:  # the previous CarePlan keeps its own urn:uuid fullUrl
            for e in bundle["entry"]:
                if e["resource"]["resourceType"] == "CarePlan":
                    e["fullUrl"] = f"urn:uuid:{e['resource']['id']}"
        result = support.evaluate(bundle, as_of=as_of)
        out[f"visit-{visit}.json"] = bundle
        out[f"visit-{visit}-output.json"] = result.bundle
        previous = result.bundle
    return out


def render() -> dict[str, str]:
    """File name (relative to this directory) -> exact file text."""
    files = {
        f"{name}.json": json.dumps(make().bundle(), indent=2, ensure_ascii=False) + "\n"
        for name, make in EXAMPLES.items()
    }
    for name, doc in follow_up_visits().items():
        files[f"{FOLLOW_UP_DIR}/{name}"] = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return files


def main(argv: list[str]) -> int:
    stale = []
    for fname, text in render().items():
        path = HERE / fname
        if "--check" in argv:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(fname)
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run python examples/_generate.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
