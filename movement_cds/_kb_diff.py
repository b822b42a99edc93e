"""What changes for patients between two knowledge-base versions (``movement-cds kb diff``).

Both versions are loaded with their own validation, then run over the same inputs at the same
as-of instant: (a) every scenario of either version (the union; a scenario whose input
differs between the versions is run in both forms), (b) a seeded synthetic population of FHIR
Bundles (``fhir_adapters._population``), read by each version with its own fact catalog, and
(c) a primary-care population of the same size, whose ``kb profile`` figures
(``movement_cds._kb_profile``) are shown for both versions side by side.

Every patient goes through the pipeline every evaluation takes (``movement_cds._api.Pipeline``:
read, rules, plan, and at a follow-up the revision of the previous plan) and each evaluation
is reduced to a normalised outcome: alerts (code and level), the most urgent
referral, held or not, proposed, avoided and deferred exercises, data gaps (facts reported
missing), and whether the input was refused. Every difference between the two outcomes of a
patient is a *change* (``("proposed", "glute-bridge", "yes", "")`` = "exercise glute-bridge
no longer proposed"); the report counts the patients each change touches and keeps the first
few examples, each with the rules behind the item in each version, the rules that fired in
only one, the input facts the two versions read differently and the facts the rules involved
read.

Engine: the plain-Python reference evaluator (proven equal to durable-rules by the property
tests in tests/test_engine.py). durable-rules is not used because it refuses to load two
different rule sets under one name in a process (an edited knowledge base whose version was
not bumped is exactly what one diffs) and because the reference evaluator is about three times
faster. Throughput comes from worker processes instead: each patient depends only on
``(seed, index)``, so chunks run anywhere and the merged report is the same for any number of
workers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar, Unpack

from cds import (
    Derivation,
    EngineResult,
    Evaluator,
    Fact,
    InputIssue,
    InvalidInputError,
    KnowledgeBase,
    KnowledgeBaseError,
    MovementCDSError,
    PatientFacts,
    Plan,
    load_knowledge_base,
)
from cds.authoring import DEFAULT_AS_OF, Scenario, load_scenarios
from fhir_adapters import InvalidBundleError, synthetic_bundle
from movement_cds._api import Pipeline
from movement_cds._errors import KnowledgeBaseLoadError
from movement_cds._population_input import PopulationInput, bucket_entries
from movement_cds._runner import Task, Where, run_tasks

__all__ = [
    "DEFAULT_AS_OF",
    "Change",
    "DiffReport",
    "Example",
    "KnowledgeBaseLoadError",
    "Outcome",
    "PopulationOptions",
    "Section",
    "Work",
    "default_workers",
    "describe",
    "diff_knowledge_bases",
    "run_in_buckets",
    "run_in_chunks",
    "write_examples",
]

if TYPE_CHECKING:
    from movement_cds._kb_profile import Profile

T = TypeVar("T")
EXAMPLES = 3
_PRIORITY = ("stat", "asap", "urgent", "routine")
ChangeKey = tuple[str, str, str, str]  # (category, item, before, after); "" = absent


# --- one evaluation, normalised ------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a clinician would see change, reduced to comparable sets."""

    alerts: dict[str, str] = field(default_factory=dict)  # code -> level
    referral: str = "none"
    held: bool = False
    proposed: frozenset[str] = frozenset()
    avoided: frozenset[str] = frozenset()
    deferred: frozenset[str] = frozenset()
    gaps: frozenset[str] = frozenset()
    error: str = ""


@dataclass
class _Evaluated:
    """An outcome with the material to explain it (kept only inside a worker)."""

    outcome: Outcome
    kb: KnowledgeBase | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # input facts as this version read them
    prepared: dict[str, Any] = field(default_factory=dict)  # with computed scores
    result: EngineResult | None = None
    behind: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)


def _normalise(plan: Plan) -> tuple[Outcome, dict[tuple[str, str], tuple[str, ...]]]:
    prios = [a.referral.priority for a in plan.alerts if a.referral]
    behind: dict[tuple[str, str], tuple[str, ...]] = {}
    for a in plan.alerts:
        behind["alert", a.code] = a.rule_ids
    for x in plan.exercises:
        behind["proposed", x.exercise_id] = x.rule_ids
    for v in plan.avoid:
        behind["avoided", v.exercise_id] = v.rule_ids
    for d in plan.deferred:
        behind["deferred", d.exercise_id] = d.rule_ids
    for g in plan.data_gaps:
        for m in g.missing:
            behind["gap", m] = (*behind.get(("gap", m), ()), g.rule_id)
    out = Outcome(
        alerts={a.code: a.level for a in plan.alerts},
        referral=min(prios, key=_PRIORITY.index) if prios else "none",
        held=plan.exercise_held,
        proposed=frozenset(x.exercise_id for x in plan.exercises),
        avoided=frozenset(v.exercise_id for v in plan.avoid),
        deferred=frozenset(d.exercise_id for d in plan.deferred),
        gaps=frozenset(m for g in plan.data_gaps for m in g.missing),
    )
    return out, behind


def _evaluate(pipeline: Pipeline, read: Callable[[], PatientFacts]) -> _Evaluated:
    """One patient through the pipeline every evaluation takes (the follow-up step
    included), reduced to its outcome; a refused input or a failed evaluation is an
    outcome too."""
    try:
        patient = read()
    except InvalidBundleError as e:
        first = e.issues[0].message if e.issues else "invalid input"
        return _Evaluated(Outcome(error=f"input refused: {first}"), pipeline.kb)
    facts = {f.name: f.value for f in patient.facts}
    try:
        steps = pipeline.run(patient)
    except InvalidInputError as e:
        return _Evaluated(Outcome(error=f"input refused: {e}"), pipeline.kb, facts)
    except MovementCDSError as e:
        return _Evaluated(Outcome(error=f"evaluation failed: {type(e).__name__}: {e}"),
                          pipeline.kb, facts)
    outcome, behind = _normalise(steps.plan)
    return _Evaluated(outcome, pipeline.kb, facts,
                      {f.name: f.value for f in steps.prepared.facts}, steps.result, behind)


def changes(old: Outcome, new: Outcome) -> list[ChangeKey]:
    """Every difference between two outcomes of one patient, as change keys."""
    out: list[ChangeKey] = []
    if old.error != new.error:
        out.append(("error", "", old.error, new.error))
        if old.error or new.error:
            return out  # nothing else is comparable
    for code in sorted(old.alerts.keys() | new.alerts.keys()):
        a, b = old.alerts.get(code, ""), new.alerts.get(code, "")
        if a != b:
            out.append(("alert", code, a, b))
    if old.referral != new.referral:
        out.append(("referral", "", old.referral, new.referral))
    if old.held != new.held:
        out.append(("held", "", "yes" if old.held else "no", "yes" if new.held else "no"))
    for cat in ("proposed", "avoided", "deferred", "gaps"):
        a_set: frozenset[str] = getattr(old, cat)
        b_set: frozenset[str] = getattr(new, cat)
        name = "gap" if cat == "gaps" else cat
        out += [(name, x, "yes", "") for x in sorted(a_set - b_set)]
        out += [(name, x, "", "yes") for x in sorted(b_set - a_set)]
    return out


def describe(key: ChangeKey) -> str:
    """A change key in words: "exercise glute-bridge no longer proposed"."""
    cat, item, before, after = key
    if cat == "error":
        if not before:
            return f"evaluation now fails ({after})"
        if not after:
            return f"evaluation no longer fails (was: {before})"
        return f"evaluation failure changes: {before} -> {after}"
    if cat == "alert":
        if not before:
            return f"alert {item} now raised ({after})"
        if not after:
            return f"alert {item} no longer raised (was {before})"
        return f"alert {item} level {before} -> {after}"
    if cat == "referral":
        return f"most urgent referral {before} -> {after}"
    if cat == "held":
        return "exercise now held" if after == "yes" else "exercise no longer held"
    verb = {"proposed": "proposed", "avoided": "listed as avoid (do not perform)",
            "deferred": "deferred", "gap": "reported missing"}[cat]
    noun = "" if cat == "gap" else "exercise "
    return f"{noun}{item} now {verb}" if after else f"{noun}{item} no longer {verb}"


# --- examples -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One patient a change touches, with what explains it."""

    patient: str  # "synthetic #123" or "scenario <id>"
    index: int | None
    rules_before: tuple[str, ...]  # the rules behind the item in OLD
    rules_after: tuple[str, ...]
    fired_only_before: tuple[str, ...]
    fired_only_after: tuple[str, ...]
    facts_differ: dict[str, tuple[str, str]]  # input facts the versions read differently
    key_facts: dict[str, str]  # the input facts the rules involved read (OLD, then NEW)

    def to_json(self) -> dict[str, Any]:
        return {
            "patient": self.patient,
            "index": self.index,
            "rules_before": list(self.rules_before),
            "rules_after": list(self.rules_after),
            "fired_only_before": list(self.fired_only_before),
            "fired_only_after": list(self.fired_only_after),
            "facts_differ": {k: list(v) for k, v in self.facts_differ.items()},
            "key_facts": self.key_facts,
        }


def _show(v: Any) -> str:
    if v is None:
        return "(missing)"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _trace(ev: _Evaluated, rule_ids: Iterable[str], into: dict[str, str], limit: int) -> None:
    """The input facts behind ``rule_ids``' firings, following derived facts back."""
    if ev.result is None:
        return
    derived = ev.result.derived
    todo: list[Derivation] = [d for d in ev.result.firings if d.rule_id in set(rule_ids)]
    seen: set[str] = set()
    while todo and len(into) < limit:
        d = todo.pop(0)
        for name in d.used:
            if name in seen:
                continue
            seen.add(name)
            if name in derived:
                todo.extend(derived[name].derivations)
            elif name in ev.prepared and len(into) < limit:
                into.setdefault(name, _show(ev.prepared[name]))
        for name in d.absent:
            if name not in seen and name not in derived and len(into) < limit:
                seen.add(name)
                defn = ev.kb.facts.get(name) if ev.kb is not None else None
                into.setdefault(name, "(not derived)" if defn and defn.derived else "(missing)")


def _example(label: str, index: int | None, key: ChangeKey, old: _Evaluated,
             new: _Evaluated) -> Example:
    cat, item = key[0], key[1]
    bkey = ("gap" if cat == "gap" else cat, item)
    before, after = old.behind.get(bkey, ()), new.behind.get(bkey, ())
    fired_old = {d.rule_id for d in old.result.firings} if old.result else set()
    fired_new = {d.rule_id for d in new.result.firings} if new.result else set()
    only_old, only_new = sorted(fired_old - fired_new), sorted(fired_new - fired_old)
    differ = {
        n: (_show(old.facts.get(n)), _show(new.facts.get(n)))
        for n in sorted(old.facts.keys() | new.facts.keys())
        if old.facts.get(n) != new.facts.get(n)
    }
    key_facts: dict[str, str] = {}
    _trace(old, [*before, *only_old], key_facts, 12)
    _trace(new, [*after, *only_new], key_facts, 12)
    return Example(label, index, tuple(before), tuple(after), tuple(only_old),
                   tuple(only_new), dict(list(differ.items())[:12]), key_facts)


# --- tallies --------------------------------------------------------------------------------


@dataclass
class _Tally:
    """Counts per change and the first examples (lowest index first), mergeable."""

    patients: int = 0
    changed: int = 0
    counts: dict[ChangeKey, int] = field(default_factory=dict)
    examples: dict[ChangeKey, list[tuple[int, Example]]] = field(default_factory=dict)
    members: dict[ChangeKey, list[str]] = field(default_factory=dict)  # scenario ids

    def add(self, order: int, label: str, index: int | None, old: _Evaluated,
            new: _Evaluated, keep_members: bool = False) -> None:
        self.patients += 1
        keys = changes(old.outcome, new.outcome)
        if keys:
            self.changed += 1
        for key in keys:
            self.counts[key] = self.counts.get(key, 0) + 1
            if keep_members:
                self.members.setdefault(key, []).append(label)
            ex = self.examples.setdefault(key, [])
            if len(ex) < EXAMPLES:
                ex.append((order, _example(label, index, key, old, new)))

    def merge(self, other: _Tally) -> None:
        self.patients += other.patients
        self.changed += other.changed
        for key, n in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        for key, exs in other.examples.items():
            merged = sorted([*self.examples.get(key, []), *exs], key=lambda oe: oe[0])
            self.examples[key] = merged[:EXAMPLES]
        for key, ms in other.members.items():
            self.members.setdefault(key, []).extend(ms)


@dataclass(frozen=True)
class Change:
    key: ChangeKey
    description: str
    patients: int
    percent: float
    examples: tuple[Example, ...]
    members: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        cat, item, before, after = self.key
        doc: dict[str, Any] = {
            "change": self.description, "category": cat, "item": item or None,
            "before": before or None, "after": after or None,
            "patients": self.patients, "percent": round(self.percent, 2),
            "examples": [e.to_json() for e in self.examples],
        }
        if self.members:
            doc["scenarios"] = list(self.members)
        return doc


@dataclass(frozen=True)
class Section:
    """The changes over one corpus (the scenarios, or the synthetic population)."""

    name: str
    patients: int
    changed: int
    changes: tuple[Change, ...]

    @staticmethod
    def of(name: str, t: _Tally) -> Section:
        out = [
            Change(key, describe(key), n, 100.0 * n / t.patients if t.patients else 0.0,
                   tuple(e for _, e in t.examples.get(key, [])),
                   tuple(t.members.get(key, [])))
            for key, n in t.counts.items()
        ]
        out.sort(key=lambda c: (-c.patients, c.key))
        return Section(name, t.patients, t.changed, tuple(out))

    def to_json(self) -> dict[str, Any]:
        return {"patients": self.patients, "changed": self.changed,
                "changes": [c.to_json() for c in self.changes]}


@dataclass(frozen=True)
class DiffReport:
    old: str  # ruleset names
    new: str
    old_root: str
    new_root: str
    as_of: datetime
    seed: int
    scenarios: Section
    population: Section
    profiles: tuple[Profile, Profile] | None = None  # OLD, NEW on the primary-care population
    profile_note: str = ""  # why there are no profiles
    population_input: str = ""  # the real population run instead of the synthetic one

    @property
    def changed(self) -> bool:
        return bool(self.scenarios.changes or self.population.changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "old": {"knowledge_base": self.old, "directory": self.old_root},
            "new": {"knowledge_base": self.new, "directory": self.new_root},
            "as_of": self.as_of.isoformat(),
            "seed": self.seed,
            "engine": "reference",
            "changed": self.changed,
            "scenarios": self.scenarios.to_json(),
            ("input_population" if self.population_input else "synthetic"):
                self.population.to_json(),
            "population_input": self.population_input or None,
            "profile": ({"old": self.profiles[0].to_json(), "new": self.profiles[1].to_json()}
                        if self.profiles else None),
            "profile_note": self.profile_note or None,
        }

    def to_text(self) -> str:
        seed = (f"population {self.population_input}" if self.population_input
                else f"seed {self.seed}")
        lines = [f"kb diff: {self.old} ({self.old_root}) -> {self.new} ({self.new_root})",
                 f"as of {self.as_of.isoformat()}, {seed}", ""]
        for title, sec, unit in (
            ("Scenario corpus", self.scenarios, "scenarios"),
            ("Input population" if self.population_input else "Synthetic population",
             self.population, "patients"),
        ):
            pct = 100.0 * sec.changed / sec.patients if sec.patients else 0.0
            lines.append(f"{title}: {sec.changed} of {sec.patients} {unit} change "
                         f"({_pct(pct)}), {len(sec.changes)} distinct change(s)")
            for c in sec.changes:
                lines.append(f"  - {c.description}: {_count(c.patients, unit)} "
                             f"({_pct(c.percent)})")
                if c.members and len(c.members) > len(c.examples):
                    shown = ", ".join(c.members[:10])
                    more = f" and {len(c.members) - 10} more" if len(c.members) > 10 else ""
                    lines.append(f"      scenarios: {shown}{more}")
                for e in c.examples:
                    lines.append(f"      e.g. {e.patient}")
                    if e.rules_before or e.rules_after:
                        lines.append(f"        behind it: OLD {', '.join(e.rules_before) or '-'}"
                                     f"; NEW {', '.join(e.rules_after) or '-'}")
                    if e.fired_only_before or e.fired_only_after:
                        lines.append(
                            f"        fired only in OLD: {', '.join(e.fired_only_before) or '-'}"
                            f"; only in NEW: {', '.join(e.fired_only_after) or '-'}")
                    if e.facts_differ:
                        lines.append("        read differently: " + ", ".join(
                            f"{k} {a} -> {b}" for k, (a, b) in e.facts_differ.items()))
                    if e.key_facts:
                        lines.append("        key facts: " + ", ".join(
                            f"{k}={v}" for k, v in e.key_facts.items()))
            lines.append("")
        if self.profiles:
            from movement_cds._kb_profile import side_by_side

            lines += [side_by_side(*self.profiles)]
        elif self.profile_note:
            lines += [f"Primary-care profile: not made ({self.profile_note})", ""]
        verdict = ("outputs change: review the changes above before release" if self.changed
                   else "no output changes")
        lines.append(verdict)
        return "\n".join(lines) + "\n"


def _pct(p: float) -> str:
    return f"{p:.2f}%" if 0 < p < 0.1 else f"{p:.1f}%"


def _count(n: int, unit: str) -> str:
    return f"{n} {unit[:-1] if n == 1 else unit}"


# --- loading --------------------------------------------------------------------------------


@dataclass
class _Version:
    root: Path
    kb: KnowledgeBase
    evaluator: Evaluator
    pipeline: Pipeline = field(init=False)

    def __post_init__(self) -> None:
        self.pipeline = Pipeline(self.evaluator)


def _load(which: str, root: Path) -> tuple[_Version, list[tuple[Scenario, str, int | None]]]:
    try:
        kb = load_knowledge_base(root)
        evaluator = Evaluator(kb, "reference")  # compiles: the compiler's checks run too
        scenarios = load_scenarios(root)
    except KnowledgeBaseError as e:
        raise KnowledgeBaseLoadError(which, root, [str(p) for p in e.problems
                                                   if p.severity == "error"]) from None
    return _Version(root, kb, evaluator), scenarios


def _scenario_reader(version: _Version, sc: Scenario, origin: Path, rel: str,
                     as_of: datetime) -> Callable[[], PatientFacts]:
    if sc.bundle is not None:
        path = (origin / rel).parent / sc.bundle

        def read_file() -> PatientFacts:
            try:
                data = path.read_bytes()
            except OSError as e:
                raise InvalidBundleError([InputIssue(
                    "fatal", "not-found", f"cannot read {sc.bundle}: {e.strerror or e}")]) from None
            return version.pipeline.read(data, as_of)

        return read_file
    facts: list[Fact] = []
    for name, value in sorted((sc.facts or {}).items()):
        src = (f"scenario:{sc.id}#{name}",)
        if isinstance(value, dict):
            facts += [Fact(f"{name}.{side}", v, src) for side, v in sorted(value.items())]
        else:
            facts.append(Fact(name, value, src))
    return lambda: PatientFacts.build(f"Patient/{sc.id}", as_of, facts)


def _scenario_input(sc: Scenario, origin: Path, rel: str) -> str:
    """What identifies a scenario's input, to tell whether two versions' copies differ."""
    if sc.bundle is not None:
        path = (origin / rel).parent / sc.bundle
        try:
            return f"bundle:{path.read_text(encoding='utf-8')}|{sc.as_of}"
        except OSError:
            return f"bundle-missing:{sc.bundle}|{sc.as_of}"
    return f"facts:{sorted((sc.facts or {}).items())!r}|{sc.as_of}"


def _run_scenarios(old: _Version, new: _Version,
                   old_sc: list[tuple[Scenario, str, int | None]],
                   new_sc: list[tuple[Scenario, str, int | None]],
                   as_of: datetime | None) -> _Tally:
    """The union of both versions' scenario inputs, each run by both versions."""
    inputs: dict[str, tuple[Scenario, Path, str]] = {}
    for origin, tag, scs in ((old.root, "OLD", old_sc), (new.root, "NEW", new_sc)):
        for sc, rel, _line in scs:
            if sc.id not in inputs:
                inputs[sc.id] = (sc, origin, rel)
                continue
            first = inputs[sc.id]
            if _scenario_input(first[0], first[1], first[2]) != _scenario_input(sc, origin, rel):
                inputs[f"{sc.id} (OLD input)"] = inputs.pop(sc.id)
                inputs[f"{sc.id} ({tag} input)"] = (sc, origin, rel)
    tally = _Tally()
    for order, label in enumerate(sorted(inputs)):
        sc, origin, rel = inputs[label]
        when = as_of or sc.as_of or DEFAULT_AS_OF
        a = _evaluate(old.pipeline, _scenario_reader(old, sc, origin, rel, when))
        b = _evaluate(new.pipeline, _scenario_reader(new, sc, origin, rel, when))
        tally.add(order, f"scenario {label}", None, a, b, keep_members=True)
    return tally


# --- the synthetic population, in chunks (in this process or in workers) ---------------------


_WORKER: tuple[_Version, _Version] | None = None


def _init_worker(old_root: str, new_root: str) -> None:
    global _WORKER
    old, _ = _load("OLD", Path(old_root))
    new, _ = _load("NEW", Path(new_root))
    _WORKER = (old, new)


def _chunk(old: _Version, new: _Version, seed: int, as_of: datetime, start: int,
           n: int) -> _Tally:
    tally = _Tally()
    for i in range(start, start + n):
        data = synthetic_bundle(seed, i, as_of)
        a = _evaluate(old.pipeline, partial(old.pipeline.read, data, as_of))
        b = _evaluate(new.pipeline, partial(new.pipeline.read, data, as_of))
        tally.add(i, f"synthetic #{i}", i, a, b)
    return tally


def _worker_chunk(seed: int, as_of: datetime, start: int, n: int) -> _Tally:
    assert _WORKER is not None, "worker not initialised"
    return _chunk(_WORKER[0], _WORKER[1], seed, as_of, start, n)


def default_workers(patients: int) -> int:
    """One process for small runs (starting workers costs ~1 s each); else up to 4."""
    return 1 if patients < 2000 else max(1, min(4, os.cpu_count() or 1))


class PopulationOptions(TypedDict, total=False):
    """The keyword arguments ``diff_knowledge_bases`` and ``profile_knowledge_base`` share:
    the synthetic population (``patients``, ``seed``), the instant (``as_of``), where it runs
    (``workers`` local processes, or on the Dask ``scheduler``), ``progress(done, total)``,
    and a real ``population`` (bucket files) instead of the synthetic one."""

    patients: int
    seed: int
    as_of: datetime | None
    workers: int | None
    progress: Callable[[int, int], None] | None
    scheduler: str | None
    population: PopulationInput | None


def where_for(options: PopulationOptions, patients: int) -> Where:
    """Where ``kb diff`` and ``kb profile`` run: on the Dask ``scheduler`` when given, else
    ``workers`` local processes (default: ``default_workers`` of the patients to run, all of
    ``population``'s when given). ``TypeError`` for an option neither function takes."""
    unknown = sorted(set(options) - set(PopulationOptions.__annotations__))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    scheduler, population = options.get("scheduler"), options.get("population")
    if scheduler is not None:
        return Where(scheduler=scheduler)
    n = population.patients if population is not None else patients
    workers = options.get("workers")
    return Where(workers=workers if workers is not None else default_workers(n))


@dataclass(frozen=True)
class Work(Generic[T]):
    """What a run does with each part (a chunk of synthetic patients, or a bucket file):
    ``local(*part)`` in this process when ``where`` is this process, else ``remote(*part)``
    (picklable) in worker processes (a process pool or Dask), each set up once by
    ``initializer(*initargs)``."""

    local: Callable[..., T]
    remote: Callable[..., T]
    initializer: Callable[..., None]
    initargs: tuple[Any, ...]


def run_in_chunks(n: int, where: Where, progress: Callable[[int, int], None] | None,
                  work: Work[T]) -> list[T]:
    """Patients 0 .. n-1 in chunks ``(start, k)``, on the shared runner
    (``movement_cds._runner``). Returns the chunks' results in patient order, so that merging
    them gives the same result for any number of workers. ``progress(done, n)`` is called as
    chunks complete."""
    if n <= 0:
        return []
    size = max(50, min(500, n // (max(1, where.workers) * 8) or 50))
    parts = [((s, min(size, n - s)), min(size, n - s), f"chunk-{s}") for s in range(0, n, size)]
    return _run_parts(parts, where, progress, work)


def run_in_buckets(population: PopulationInput, sizes: list[int], where: Where,
                   progress: Callable[[int, int], None] | None, work: Work[T]) -> list[T]:
    """``run_in_chunks`` over a real population: one part ``(path, bucket_number)`` per
    bucket file, results in bucket order."""
    parts = [((str(b), i), sizes[i], f"bucket-{i}") for i, b in enumerate(population.buckets)]
    return _run_parts(parts, where, progress, work)


def _run_parts(parts: list[tuple[tuple[Any, ...], int, str]], where: Where,
               progress: Callable[[int, int], None] | None, work: Work[T]) -> list[T]:
    tasks = [Task(work.remote, args, size, work.initializer, work.initargs, name=name)
             for args, size, name in parts]
    return run_tasks(tasks, where, progress,
                     local=[partial(work.local, *args) for args, _, _ in parts])


def bucket_sizes(population: PopulationInput) -> list[int]:
    """Patients (lines) per bucket file, for progress."""
    out = []
    for b in population.buckets:
        with b.open("rb") as f:
            out.append(sum(1 for raw in f if raw.strip()))
    return out


def _refused(problem: str) -> Callable[[], PatientFacts]:
    def read() -> PatientFacts:
        raise InvalidBundleError([InputIssue("error", "structure", problem)])

    return read


#: A bucket patient's place in the merged order: bucket number, then line.
BUCKET_ORDER = 10_000_000


def _bucket_chunk(old: _Version, new: _Version, as_of: datetime, path: str,
                  number: int) -> _Tally:
    tally = _Tally()
    for pos, e in enumerate(bucket_entries(Path(path))):
        label = f"patient {e.patient or f'(line {e.line} of bucket {number})'}"
        if e.bundle is None:
            a = _evaluate(old.pipeline, _refused(e.problem))
            b = _evaluate(new.pipeline, _refused(e.problem))
        else:
            a = _evaluate(old.pipeline, partial(old.pipeline.read, e.bundle, as_of))
            b = _evaluate(new.pipeline, partial(new.pipeline.read, e.bundle, as_of))
        tally.add(number * BUCKET_ORDER + pos, label, None, a, b)
    return tally


def _worker_bucket(as_of: datetime, path: str, number: int) -> _Tally:
    assert _WORKER is not None, "worker not initialised"
    return _bucket_chunk(_WORKER[0], _WORKER[1], as_of, path, number)


def _run_population(old: _Version, new: _Version, n: int, seed: int, as_of: datetime,
                    where: Where, progress: Callable[[int, int], None] | None,
                    population: PopulationInput | None = None) -> _Tally:
    total = _Tally()
    init = (str(old.root), str(new.root))
    if population is not None:
        parts = run_in_buckets(population, bucket_sizes(population), where, progress,
                               Work(partial(_bucket_chunk, old, new, as_of),
                                    partial(_worker_bucket, as_of), _init_worker, init))
    else:
        parts = run_in_chunks(n, where, progress,
                              Work(partial(_chunk, old, new, seed, as_of),
                                   partial(_worker_chunk, seed, as_of), _init_worker, init))
    for part in parts:
        total.merge(part)
    return total


def diff_knowledge_bases(old_root: Path, new_root: Path,
                         **options: Unpack[PopulationOptions]) -> DiffReport:
    """Run OLD and NEW over the scenarios and ``patients`` synthetic patients (default
    10,000; seed 1; or, given, every patient of ``population``, a real population as bucket
    files); report what changes. Raises ``KnowledgeBaseLoadError`` naming the version that
    cannot be loaded. The options: ``PopulationOptions``.

    ``as_of`` applies to the population and overrides every scenario's own instant (default:
    each scenario's own, and ``DEFAULT_AS_OF`` for the population, so reports are the same any
    day). ``progress(done, total)`` is called as patients complete. ``scheduler``: run the
    population on that Dask scheduler instead of ``workers`` local processes.
    """
    from movement_cds._kb_profile import ProfileError, profile_versions

    patients, seed = options.get("patients", 10_000), options.get("seed", 1)
    where = where_for(options, patients)
    as_of, progress = options.get("as_of"), options.get("progress")
    population = options.get("population")
    old, old_sc = _load("OLD", old_root)
    new, new_sc = _load("NEW", new_root)
    when = as_of or DEFAULT_AS_OF
    scen = _run_scenarios(old, new, old_sc, new_sc, as_of)
    n = population.patients if population is not None else patients

    def stage(offset: int) -> Callable[[int, int], None] | None:
        """Progress over both populations as one count (2 x patients)."""
        if progress is None:
            return None
        report = progress
        return lambda done, _total: report(offset + done, 2 * n)

    pop = _run_population(old, new, patients, seed, when, where, stage(0), population)
    profiles, note = None, ""
    if n > 0:
        try:
            a, b = profile_versions([old_root, new_root], patients=patients, seed=seed,
                                    as_of=when, workers=where, progress=stage(n),
                                    which=("OLD", "NEW"), population=population)
            profiles = (a, b)
        except ProfileError as e:
            note = str(e)
            if progress is not None:
                progress(2 * n, 2 * n)
    return DiffReport(
        old=old.kb.ruleset_name, new=new.kb.ruleset_name, old_root=str(old_root),
        new_root=str(new_root), as_of=when, seed=seed,
        scenarios=Section.of("scenarios", scen), population=Section.of("synthetic", pop),
        profiles=profiles, profile_note=note,
        population_input=str(population.source) if population is not None else "",
    )


def write_examples(report: DiffReport, out: Path) -> list[Path]:
    """Write each synthetic example patient's Bundle (rebuilt from its index) to ``out``."""
    indices = sorted({e.index for c in report.population.changes for e in c.examples
                      if e.index is not None})
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in indices:
        path = out / f"synthetic-{i}.json"
        data = synthetic_bundle(report.seed, i, report.as_of)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
