"""Synthetic FHIR Bulk Data exports (``movement-cds population synth``, issue 16 part 6).

``synth_export(out, patients=N, seed=S, as_of=T, kb=KB)`` writes what a FHIR server's
``$export`` would give for N patients: ``Patient.ndjson``, ``Observation.000.ndjson``,
``Observation.001.ndjson``... (a new file every ``lines_per_file`` lines, at a patient
boundary), ``Condition.ndjson``, ``CarePlan.ndjson`` (``.ndjson.gz`` with ``gzip=True``) and
``manifest.json``, a completed ``$export`` status manifest whose ``output[].url`` are paths
relative to it (so the folder can be moved; a server's manifest has absolute URLs).
Types without resources get no file, as in the Bulk Data specification.

Each patient depends only on ``(seed, index, as_of)`` (``synth_patient``): half come from
the mixed population (the resources of ``synthetic_bundle``: every kind of imperfect
input), half from the primary-care one (those of ``primary_care_bundle``: complete red-flag
screens), and on top of that:

* ids unique across the export (``<patient>-<id>``); one patient in ten has a UUID id and is
  mostly referred to as ``urn:uuid:<id>``; about one reference in seven is an absolute
  ``https://ehr.example.org/fhir/Patient/<id>``;
* **history**: four patients in ten have older copies of some Observations (dated 30-400
  days before the current one), which the current answers supersede;
* **follow-ups**: about one patient in seven has a previous CarePlan of this project
  (``instantiatesUri`` under the knowledge-base URI, two or three exercises of the
  catalog with their default doses, the follow-up state extension), sometimes an older
  one too, and response Observations about its exercises (docs/integrators/follow-up.md);
* **bad resources**, ``max(1, patients // 1000)`` of each kind, at seeded places in the
  Observation files: a broken JSON line, an Observation of a patient who is not in the
  export (``syn-missing-<n>``), a Condition in an Observation file. ``group_export``
  rejects the first and third and reports the second as an orphan.

The same arguments give byte-identical files (gzip headers carry no time or name).
"""

from __future__ import annotations

import gzip
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import orjson

from fhir_adapters._bundle_builder import (
    concept,
    condition,
    exercise_response,
    observation,
    quantity,
    value_x,
)
from fhir_adapters._population import (
    _Patient,
    _PrimaryCarePatient,
    red_flag_items,
)
from fhir_adapters._terminology import (
    EXERCISE_SYSTEM,
    EXT_EXERCISE_DOSE,
    EXT_FOLLOW_UP_STATE,
    KNOWLEDGE_BASE_BASE,
    SCREEN_SYSTEM,
    SNOMED,
)

if TYPE_CHECKING:
    from cds import KnowledgeBase
    from fhir_adapters._population import RedFlagItem

__all__ = ["SynthReport", "synth_export", "synth_patient"]

EHR_BASE: Final = "https://ehr.example.org/fhir/"
_NS: Final = uuid.UUID("6f1d2c4e-93a7-4b1e-8d55-0c2b7e9a4f18")
_RATINGS: Final = ("better", "same", "worse")
_PREVIOUS_PLAN_DAYS: Final = 14
BAD_KINDS: Final = ("broken-json", "orphan", "wrong-type")


@dataclass(frozen=True)
class SynthReport:
    """What ``synth_export`` wrote: per file (type, path, lines), the manifest, and how many
    bad lines of each kind (``BAD_KINDS``) with where they are (file name, line)."""

    out: Path
    patients: int
    files: tuple[tuple[str, Path, int], ...]
    manifest: Path
    bad: tuple[tuple[str, str, int], ...]  # (kind, file name, line)


@dataclass(frozen=True)
class _Context:
    seed: int
    as_of: datetime
    items: tuple[RedFlagItem, ...]
    kb_uri: str
    exercises: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...]  # id, dose ext, repeat


def _context(seed: int, as_of: datetime, kb: KnowledgeBase) -> _Context:
    exercises = []
    for ex_id in sorted(kb.exercises):
        d = kb.exercises[ex_id].dose
        subs: list[dict[str, Any]] = [
            {"url": url, **value_x("integer", n)}
            for url, n in (("sets", d.sets), ("repetitions", d.repetitions)) if n is not None]
        if d.hold_seconds is not None:
            subs.append({"url": "hold-seconds", **quantity(d.hold_seconds, "s")})
        subs.append({"url": "pain-monitoring", "valueString": d.pain_monitoring})
        repeat = {"frequency": d.frequency, "period": d.period, "periodUnit": d.period_unit}
        exercises.append((ex_id, {"url": EXT_EXERCISE_DOSE, "extension": subs}, repeat))
    return _Context(seed, as_of, red_flag_items(kb),
                    f"{KNOWLEDGE_BASE_BASE}/{kb.manifest.id}|{kb.manifest.version}",
                    tuple(exercises))


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class _SynthPatient:
    """One patient's resources, every random choice from its own ``random.Random``."""

    def __init__(self, ctx: _Context, index: int) -> None:
        self.ctx = ctx
        self.rng = random.Random(f"movement-cds-bulk:{ctx.seed}:{index}")
        self.index = index
        self.uuid_id = self.rng.random() < 0.1
        self.pid = str(uuid.uuid5(_NS, f"{ctx.seed}:{index}")) if self.uuid_id \
            else f"syn-{index}"

    def reference(self) -> dict[str, str]:
        r = self.rng.random()
        if self.uuid_id and r < 0.7:
            return {"reference": f"urn:uuid:{self.pid}"}
        if r > 0.86:
            return {"reference": f"{EHR_BASE}Patient/{self.pid}"}
        return {"reference": f"Patient/{self.pid}"}

    def resources(self) -> list[dict[str, Any]]:
        ctx = self.ctx
        if self.rng.random() < 0.5:  # the generators' Bundles, without the Bundle around
            visit = _PrimaryCarePatient(ctx.seed, self.index, ctx.as_of, ctx.items).visit()
        else:
            visit = _Patient(ctx.seed, self.index, ctx.as_of).visit()
        out: list[dict[str, Any]] = []
        for res in visit:
            if res["resourceType"] == "Patient":
                res["id"] = self.pid
            else:
                res["id"] = f"{self.pid}-{res['id']}"
                res["subject"] = self.reference()
            out.append(res)
        if self.rng.random() < 0.4:
            out.extend(self.history([r for r in out if r["resourceType"] == "Observation"]))
        if self.rng.random() < 0.15:
            out.extend(self.follow_up())
        return out

    def history(self, observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Older copies of a few Observations: superseded by the current ones."""
        dated = [o for o in observations if "effectiveDateTime" in o]
        picked = self.rng.sample(dated, min(len(dated), self.rng.randint(1, 4)))
        out = []
        for k, obs in enumerate(picked, 1):
            old = dict(obs)
            when = datetime.fromisoformat(obs["effectiveDateTime"].replace("Z", "+00:00"))
            old["effectiveDateTime"] = _stamp(when - timedelta(days=self.rng.uniform(30, 400)))
            old["id"], old["status"] = f"{self.pid}-hist-{k}", "final"
            old["subject"] = self.reference()
            out.append(old)
        return out

    def follow_up(self) -> list[dict[str, Any]]:
        """A previous CarePlan of this project (sometimes an older one too) and the
        patient's responses about its exercises."""
        rng, ctx = self.rng, self.ctx
        chosen = rng.sample(ctx.exercises, rng.randint(2, 3))
        created = ctx.as_of - timedelta(days=_PREVIOUS_PLAN_DAYS, hours=rng.randint(1, 48))
        out = [self.careplan("cp-1", created, chosen)]
        if rng.random() < 0.3:
            out.append(self.careplan("cp-0", created - timedelta(days=_PREVIOUS_PLAN_DAYS),
                                     rng.sample(ctx.exercises, 2)))
        for ex_id, _, _ in chosen:
            out.extend(self.responses(ex_id))
        return out

    def careplan(self, cid: str, created: datetime,
                 exercises: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
        activities = []
        for ex_id, dose, repeat in exercises:
            status = self.rng.choices(("in-progress", "not-started", "on-hold"), (80, 15, 5))[0]
            state = {"url": EXT_FOLLOW_UP_STATE, "extension": [
                {"url": "since", "valueDateTime": _stamp(created)},
                {"url": "consecutive-bad", "valueInteger": self.rng.choice((0, 0, 0, 1))}]}
            activities.append({"detail": {
                "extension": [dose, state],
                "code": concept(EXERCISE_SYSTEM, ex_id),
                "status": status, "doNotPerform": False,
                "scheduledTiming": {"repeat": repeat}}})
        return {"resourceType": "CarePlan", "id": f"{self.pid}-{cid}",
                "instantiatesUri": [self.ctx.kb_uri], "status": "active",
                "intent": "proposal", "subject": self.reference(), "created": _stamp(created),
                "activity": activities}

    def responses(self, ex_id: str) -> list[dict[str, Any]]:
        rng = self.rng
        when = _stamp(self.ctx.as_of - timedelta(days=rng.uniform(0.5, 3)))
        prescribed = rng.choice((6, 10, 14))
        answers: list[tuple[str, dict[str, Any]]] = [
            ("pain-during", {"valueInteger": rng.choices(range(11), (8, 10, 14, 14, 12, 10,
                                                                     9, 8, 6, 5, 4))[0]}),
            ("pain-next-morning", _rating(rng.choices(_RATINGS, (30, 55, 15))[0])),
            ("sessions-done", {"valueInteger": rng.randint(0, prescribed)}),
            ("sessions-prescribed", {"valueInteger": prescribed}),
            ("perceived-effect", _rating(rng.choices(_RATINGS, (40, 45, 15))[0])),
            ("peripheralization", {"valueBoolean": rng.random() < 0.05}),
        ]
        out = []
        for item, value in answers:
            if rng.random() >= 0.85:
                continue  # an answer not given: missing, never "it went fine"
            out.append(exercise_response(item, value, ex_id, oid=f"{self.pid}-r-{ex_id}-{item}",
                                         subject=self.reference(), when=when))
        return out


def _rating(code: str) -> dict[str, Any]:
    return value_x("code", code)


def synth_patient(seed: int, index: int, as_of: datetime,
                  kb: KnowledgeBase) -> list[dict[str, Any]]:
    """The resources ``synth_export`` writes for patient ``index`` (the Patient first)."""
    return _SynthPatient(_context(seed, as_of, kb), index).resources()


class _Writer:
    """The NDJSON files of one type: ``Type.ndjson``, or ``Type.NNN.ndjson`` when split."""

    def __init__(self, out: Path, rtype: str, *, split: int | None, gz: bool) -> None:
        self.out, self.rtype, self.split, self.gz = out, rtype, split, gz
        self.files: list[tuple[Path, int]] = []
        self.stream: IO[bytes] | gzip.GzipFile | None = None
        self._raw: IO[bytes] | None = None
        self.current = ""
        self.lines = 0

    def name(self) -> str:
        number = f".{len(self.files):03d}" if self.split is not None else ""
        return f"{self.rtype}{number}.ndjson" + (".gz" if self.gz else "")

    def open(self) -> None:
        self.close()
        path = self.out / self.name()
        raw = path.open("wb")
        self.stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                    compresslevel=6) if self.gz else raw
        self._raw = raw
        self.files.append((path, 0))
        self.current = path.name
        self.lines = 0

    def at_patient_boundary(self) -> None:
        if self.split is not None and self.lines >= self.split:
            self.open()

    def write(self, line: bytes) -> tuple[str, int]:
        """Writes one line; returns (file name, line number)."""
        if self.stream is None:
            self.open()
        assert self.stream is not None
        self.stream.write(line + b"\n")
        self.lines += 1
        self.files[-1] = (self.files[-1][0], self.lines)
        return self.current, self.lines

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            if self._raw is not None and self.stream is not self._raw:
                self._raw.close()
            self.stream = None


def _bad_places(seed: int, patients: int) -> dict[int, list[str]]:
    """After which patient each bad line goes (seeded)."""
    rng = random.Random(f"movement-cds-bulk-bad:{seed}:{patients}")
    k = max(1, patients // 1000)
    places: dict[int, list[str]] = {}
    for kind in BAD_KINDS:
        for i in rng.sample(range(patients), k) if patients >= k else []:
            places.setdefault(i, []).append(kind)
    return places


def _bad_line(kind: str, index: int, n: int, ctx: _Context) -> bytes:
    if kind == "broken-json":
        whole = orjson.dumps({"resourceType": "Observation", "id": f"broken-{n}",
                              "status": "final", "subject": {"reference": f"Patient/syn-{index}"}})
        return whole[: len(whole) // 2]
    if kind == "orphan":
        return orjson.dumps(observation(
            concept(SCREEN_SYSTEM, "rf-fever"), oid=f"orphan-{n}",
            subject=f"Patient/syn-missing-{n}", when=_stamp(ctx.as_of - timedelta(days=1)),
            value=value_x("boolean", False)))
    return orjson.dumps(condition(concept(SNOMED, "279039007"), cid=f"misplaced-{n}",
                                  subject=f"Patient/syn-{index}"))


def synth_export(out: Path, *, patients: int, seed: int, as_of: datetime, kb: KnowledgeBase,
                 compress: bool = False, lines_per_file: int = 100_000,
                 progress: Callable[[int, int], None] | None = None) -> SynthReport:
    """Write a synthetic Bulk Data export of ``patients`` patients into ``out`` (see the
    module docstring). ``progress(done, total)`` is called every 100 patients and at the
    end."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = _context(seed, as_of, kb)
    writers = {t: _Writer(out, t, split=lines_per_file if t == "Observation" else None,
                          gz=compress) for t in ("Patient", "Observation", "Condition", "CarePlan")}
    places, bad, n_bad = _bad_places(seed, patients), [], 0
    try:
        for index in range(patients):
            writers["Observation"].at_patient_boundary()
            for res in _SynthPatient(ctx, index).resources():
                writers[res["resourceType"]].write(orjson.dumps(res))
            for kind in places.get(index, ()):
                n_bad += 1
                name, line = writers["Observation"].write(_bad_line(kind, index, n_bad, ctx))
                bad.append((kind, name, line))
            if progress is not None and (index % 100 == 99 or index == patients - 1):
                progress(index + 1, patients)
    finally:
        for w in writers.values():
            w.close()
    files = tuple((t, p, n) for t, w in writers.items() for p, n in w.files)
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps(_manifest(files, patients, seed, as_of, out), indent=2)
                        + "\n", encoding="utf-8")
    return SynthReport(out, patients, files, manifest, tuple(bad))


def _manifest(files: tuple[tuple[str, Path, int], ...], patients: int, seed: int,
              as_of: datetime, out: Path) -> dict[str, Any]:
    return {
        "transactionTime": as_of.isoformat(),
        "request": f"movement-cds population synth --patients {patients} --seed {seed} "
                   f"--as-of {as_of.isoformat()}",
        "requiresAccessToken": False,
        "output": [{"type": t, "url": p.relative_to(out).as_posix(), "count": n}
                   for t, p, n in files],
        "error": [],
    }
