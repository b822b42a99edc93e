"""Write the clinical vignettes: one FHIR R4 Bundle per person, deterministically.

    python knowledge_base/scenarios/vignettes/_generate.py            # rewrite the files
    python knowledge_base/scenarios/vignettes/_generate.py --check    # exit 1 if any is stale

Each vignette is one entry of ``people.yaml`` (next to this script): the clinical story, the
Patient, and what was recorded about them, each a call of the ``Vignette`` builder below
(red-flag screen, pain, STarT Back, movement screen, patterns, Observations, Conditions). What
the plan must say about that person lives in ``../vignettes.yaml`` (scenario ``vignette-<id>``,
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

import functools
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

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


TIMES = {"intake": INTAKE, "questionnaires": QUESTIONNAIRES, "pain rated": PAIN_RATED,
         "screened": SCREENED}


def build(name: str, person: dict[str, Any]) -> Vignette:
    """A vignette from its entry in people.yaml: each recorded step a builder call."""
    b = Vignette(name, birth_date=person["born"], gender=person["gender"])
    b.apply(person["recorded"], TIMES)
    return b


def load_data(path: Path) -> dict[str, Any]:
    """A generator's YAML data file (people.yaml, ../red-flag-answers/cases.yaml)."""
    data: dict[str, Any] = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    return data


PEOPLE = load_data(HERE / "people.yaml")
VIGNETTES: dict[str, Callable[[], Any]] = {
    name: functools.partial(build, name, person) for name, person in PEOPLE.items()}


def main(argv: list[str]) -> int:
    return sync(HERE, render(VIGNETTES, indent=2), argv, prune=False)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
