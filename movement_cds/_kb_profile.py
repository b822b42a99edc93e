"""What a knowledge base does to a primary-care population (``movement-cds kb profile``).

For clinical governance before a release: the knowledge base is run over a seeded synthetic
primary-care population (``fhir_adapters._population.primary_care_bundle``: every red-flag
question answered within the last few days, "yes" at documented primary-care rates) and the
report gives, each with its count, the share of patients at each level of concern
(``classification.red-flag-concern``; *unknown* when no level was derived), at each top
referral priority, with exercise held, and for whom each rule fired; the share answering
"yes" to each red-flag question (the input mix); and two safety figures with their goals:

* **no specific flag, urgent-or-higher**: among patients with no *specific* red flag and at
  most one *weak* one, the share referred ``urgent``, ``asap`` or ``stat``. Goal: at most 1%
  (knowledge brief 1b: serious pathology is about 1% of primary-care low back pain, Henschke
  2009). Specific and weak are the classes of the version's own fact catalog
  (``red-flag: specific|weak``). Age and sex are a profile, not flags. A Condition that a
  red-flag rule reads (``RF-*`` rules: a recorded cancer, osteoporosis, aneurysm, ...) counts
  as a specific indicator, since it is one.
* **cauda equina presentations, stat**: among patients answering "yes" to saddle
  anaesthesia, bladder or bowel dysfunction, the share referred ``stat``. Goal: 100%.

Each version reads the population with its own fact catalog and generates it from its own
red-flag item list; two versions with the same items see the very same Bundles. Chunks run in
worker processes through ``movement_cds._kb_diff.run_in_chunks`` on the shared runner
(``movement_cds._runner``: a process pool by default, or a Dask scheduler), and the merged
profile is the same for any number of workers. ``--input`` profiles a real population (a Bulk
Data export, grouped per patient into bucket files) instead, one task per bucket.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, Unpack

from cds import MovementCDSError, Plan
from fhir_adapters import (
    InvalidBundleError,
    RedFlagItem,
    UnclassifiedRedFlagError,
    UndocumentedRedFlagError,
    primary_care_bundle,
    red_flag_items,
)
from movement_cds._errors import ProfileError
from movement_cds._kb_diff import (
    DEFAULT_AS_OF,
    KnowledgeBaseLoadError,
    PopulationOptions,
    Work,
    _load,
    _Version,
    bucket_sizes,
    run_in_buckets,
    run_in_chunks,
    where_for,
)
from movement_cds._population_input import PopulationInput, bucket_entries
from movement_cds._runner import Where

__all__ = [
    "CAUDA_EQUINA_ITEMS",
    "LEVELS",
    "PRIORITIES",
    "KnowledgeBaseLoadError",
    "Profile",
    "ProfileError",
    "ProfileTally",
    "Row",
    "profile_knowledge_base",
    "profile_versions",
    "side_by_side",
]

LEVELS: Final = ("none", "low", "moderate", "high", "unknown")
PRIORITIES: Final = ("stat", "asap", "urgent", "routine", "none")
URGENT_OR_HIGHER: Final = frozenset({"stat", "asap", "urgent"})
#: A "yes" to any of these is a cauda equina presentation (knowledge brief RF-01).
CAUDA_EQUINA_ITEMS: Final = ("rf-saddle-anaesthesia", "rf-bladder-dysfunction",
                             "rf-bowel-dysfunction")
NO_SPECIFIC_FLAG_GOAL: Final = 1.0  # percent, at most
CAUDA_EQUINA_GOAL: Final = 100.0  # percent, at least
LEVEL_FACT: Final = "classification.red-flag-concern"


# --- one version, ready to evaluate ----------------------------------------------------------


@dataclass(frozen=True)
class _Profiled:
    """A loaded version with what the profile needs from its catalog and rules."""

    version: _Version
    items: tuple[RedFlagItem, ...]
    classes: dict[str, str]  # red-flag item -> specific | weak
    flag_conditions: frozenset[str]  # condition-* facts some RF-* rule reads
    referring: frozenset[str]  # rules whose own alert refers urgent or higher
    borrowed: str = ""  # the label of the version whose red-flag classes this one uses


def _items(version: _Version, label: str) -> tuple[RedFlagItem, ...] | None:
    """The version's red-flag items; None when its catalog classifies none (older format)."""
    try:
        return red_flag_items(version.kb)
    except UnclassifiedRedFlagError:
        return None
    except UndocumentedRedFlagError as e:
        name = f"{label} knowledge base" if label else "knowledge base"
        raise ProfileError(f"{name} {version.root}: {e}") from None


def _load_profiled(labels: Sequence[str], roots: Sequence[Path]) -> list[_Profiled]:
    """Load every version. A version whose catalog classifies no red-flag item (a catalog
    older than ``red-flag: specific|weak``) uses the classes of the first version that does,
    so that ``kb diff`` can profile a release made before the classes existed; with none,
    ``ProfileError``."""
    versions = [_load(w, r)[0] for w, r in zip(labels, roots, strict=True)]
    found = [_items(v, w) for v, w in zip(versions, labels, strict=True)]
    donor = next(((w, i) for w, i in zip(labels, found, strict=True) if i is not None), None)
    out = []
    for v, items in zip(versions, found, strict=True):
        borrowed = ""
        if items is None:
            if donor is None:
                raise ProfileError(
                    "no red-flag classes: the fact catalog gives no red-flag item a "
                    "'red-flag: specific|weak' class, so the figures 'no specific flag' and "
                    "'at most one weak flag' cannot be computed")
            borrowed, items = donor[0] or "another version", donor[1]
        out.append(_Profiled(v, items, {i.name: i.kind for i in items}, _flag_conditions(v),
                             _referring_rules(v), borrowed))
    return out


def _flag_conditions(v: _Version) -> frozenset[str]:
    """The Condition facts a red-flag rule (``RF-*``) reads: a recorded one is a specific
    indicator (a cancer, osteoporosis, an aneurysm)."""
    return frozenset(
        lit.fact for r in v.evaluator.compiled.rules if r.rule_id.startswith("RF-")
        for t in r.terms for lit in t
        if lit.fact.startswith("condition-") and lit.op != "missing")


def _referring_rules(v: _Version) -> frozenset[str]:
    """The rules whose own alert refers the patient urgent, asap or stat."""
    return frozenset(
        r.id for r in v.kb.rules for a in r.then
        if a.alert and a.alert.referral and a.alert.referral.priority.value in URGENT_OR_HIGHER)


# --- tallies ---------------------------------------------------------------------------------


@dataclass
class ProfileTally:
    """Counts over some patients of one version; mergeable (chunks, workers)."""

    patients: int = 0
    failed: int = 0  # input refused or evaluation failed (counted in no other figure)
    levels: Counter[str] = field(default_factory=Counter)
    referrals: Counter[str] = field(default_factory=Counter)
    held: int = 0
    rules: Counter[str] = field(default_factory=Counter)  # patients a rule fired for
    answers: Counter[str] = field(default_factory=Counter)  # "yes" per red-flag item
    any_flag: int = 0  # at least one "yes"
    no_specific: int = 0  # no specific flag, at most one weak flag, no red-flag Condition
    no_specific_urgent: int = 0  # ... referred urgent or higher
    no_specific_by: Counter[str] = field(default_factory=Counter)  # ... by which rules
    cauda_equina: int = 0  # a "yes" to a cauda equina item
    cauda_equina_stat: int = 0  # ... referred stat

    def add(self, v: _Profiled, facts: dict[str, Any], plan: Plan | None) -> None:
        self.patients += 1
        if plan is None:
            self.failed += 1
            return
        level = plan.derived_values.get(LEVEL_FACT)
        self.levels[level if isinstance(level, str) and level in LEVELS else "unknown"] += 1
        prios = [a.referral.priority for a in plan.alerts if a.referral]
        top = min(prios, key=PRIORITIES.index) if prios else "none"
        self.referrals[top] += 1
        self.held += plan.exercise_held
        self.rules.update({d.rule_id for d in plan.firings})
        yes = [n for n in v.classes if facts.get(n) is True]
        self.answers.update(yes)
        self.any_flag += bool(yes)
        specific = sum(1 for n in yes if v.classes[n] == "specific")
        weak = len(yes) - specific
        condition = any(facts.get(c) is True for c in v.flag_conditions)
        if specific == 0 and weak <= 1 and not condition:
            self.no_specific += 1
            if top in URGENT_OR_HIGHER:
                self.no_specific_urgent += 1
                self.no_specific_by.update({d.rule_id for d in plan.firings
                                            if d.rule_id in v.referring})
        if any(n in CAUDA_EQUINA_ITEMS for n in yes):
            self.cauda_equina += 1
            self.cauda_equina_stat += top == "stat"

    def merge(self, other: ProfileTally) -> None:
        for name in ("patients", "failed", "held", "any_flag", "no_specific",
                     "no_specific_urgent", "cauda_equina", "cauda_equina_stat"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.levels.update(other.levels)
        self.referrals.update(other.referrals)
        self.rules.update(other.rules)
        self.answers.update(other.answers)
        self.no_specific_by.update(other.no_specific_by)


def _evaluate(v: _Profiled, data: dict[str, Any], as_of: datetime,
              tally: ProfileTally) -> None:
    pipeline = v.version.pipeline  # the one every evaluation takes
    try:
        steps = pipeline.run(pipeline.read(data, as_of))
    except (InvalidBundleError, MovementCDSError):
        tally.add(v, {}, None)
        return
    tally.add(v, {f.name: f.value for f in steps.patient.facts}, steps.plan)


def _chunk(versions: Sequence[_Profiled], seed: int, as_of: datetime, start: int,
           n: int) -> list[ProfileTally]:
    tallies = [ProfileTally() for _ in versions]
    for i in range(start, start + n):
        made: dict[tuple[RedFlagItem, ...], dict[str, Any]] = {}
        for v, tally in zip(versions, tallies, strict=True):
            if v.items not in made:  # same items, same Bundle: build it once
                made[v.items] = primary_care_bundle(seed, i, as_of, v.items)
            _evaluate(v, made[v.items], as_of, tally)
    return tallies


_WORKER: list[_Profiled] = []


def _init_worker(labels: tuple[str, ...], roots: tuple[str, ...]) -> None:
    _WORKER[:] = _load_profiled(labels, [Path(r) for r in roots])


def _worker_chunk(seed: int, as_of: datetime, start: int, n: int) -> list[ProfileTally]:
    assert _WORKER, "worker not initialised"
    return _chunk(_WORKER, seed, as_of, start, n)


def _bucket_chunk(versions: Sequence[_Profiled], as_of: datetime, path: str,
                  number: int) -> list[ProfileTally]:
    """A real population's bucket: each patient as the export has it (a line that is no
    patient counts as failed)."""
    tallies = [ProfileTally() for _ in versions]
    for e in bucket_entries(Path(path)):
        for v, tally in zip(versions, tallies, strict=True):
            if e.bundle is None:
                tally.add(v, {}, None)
            else:
                _evaluate(v, e.bundle, as_of, tally)
    return tallies


def _worker_bucket(as_of: datetime, path: str, number: int) -> list[ProfileTally]:
    assert _WORKER, "worker not initialised"
    return _bucket_chunk(_WORKER, as_of, path, number)


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One figure: ``count`` of ``of`` patients."""

    section: str
    label: str
    count: int
    of: int

    @property
    def percent(self) -> float:
        return 100.0 * self.count / self.of if self.of else 0.0


@dataclass(frozen=True)
class Profile:
    knowledge_base: str  # ruleset name
    directory: str
    as_of: datetime
    seed: int
    tally: ProfileTally
    items: tuple[RedFlagItem, ...]  # the catalog's red-flag items, in catalog order
    borrowed: str = ""  # red-flag classes taken from this version (its catalog has none)
    population: str = ""  # a real population (its path) instead of the synthetic one

    def describe_population(self) -> str:
        if self.population:
            return (f"input population {self.population}: {self.tally.patients} patients, "
                    f"as of {self.as_of.isoformat()}")
        return (f"primary-care population: {self.tally.patients} patients, seed {self.seed}, "
                f"as of {self.as_of.isoformat()}; every red-flag question answered within "
                "the last 3 days")

    @property
    def no_specific_met(self) -> bool | None:
        t = self.tally
        if not t.no_specific:
            return None
        return 100.0 * t.no_specific_urgent / t.no_specific <= NO_SPECIFIC_FLAG_GOAL

    @property
    def cauda_equina_met(self) -> bool | None:
        t = self.tally
        if not t.cauda_equina:
            return None
        return t.cauda_equina_stat == t.cauda_equina

    def rows(self, rule_ids: Sequence[str] | None = None,
             items: Sequence[str] | None = None) -> list[Row]:
        """Every figure, in report order (``rule_ids``/``items``: which rules and red-flag
        items to list, default those of this profile)."""
        t, n = self.tally, self.tally.patients
        rows = [
            Row("safety", "urgent-or-higher, no specific flag and at most one weak flag",
                t.no_specific_urgent, t.no_specific),
            Row("safety", "stat for cauda equina presentations", t.cauda_equina_stat,
                t.cauda_equina),
            *(Row("level", lv, t.levels[lv], n) for lv in LEVELS),
            *(Row("referral", p, t.referrals[p], n) for p in PRIORITIES),
            Row("held", "exercise held", t.held, n),
            Row("failed", "evaluation failed or input refused", t.failed, n),
            *(Row("answer", rf, t.answers[rf], n)
              for rf in (items or [i.name for i in self.items])),
            Row("answer", "at least one red-flag answer yes", t.any_flag, n),
            *(Row("rule", r, t.rules[r], n) for r in (rule_ids or _rules(t))),
        ]
        return rows

    def to_json(self) -> dict[str, Any]:
        t = self.tally

        def share(count: int, of: int) -> dict[str, Any]:
            return {"patients": count, "of": of,
                    "percent": round(100.0 * count / of, 2) if of else 0.0}

        n = t.patients
        return {
            "knowledge_base": self.knowledge_base,
            "directory": self.directory,
            "population": "input" if self.population else "primary-care",
            "as_of": self.as_of.isoformat(),
            "seed": self.seed,
            "population_input": self.population or None,
            "engine": "reference",
            "red_flag_classes_from": self.borrowed or "own catalog",
            "patients": n,
            "failed": t.failed,
            "safety": {
                "no_specific_flag_urgent_or_higher": {
                    **share(t.no_specific_urgent, t.no_specific),
                    "goal": f"<= {NO_SPECIFIC_FLAG_GOAL:g}%", "met": self.no_specific_met,
                    "referred_by": {r: t.no_specific_by[r] for r in _by_count(t.no_specific_by)}},
                "cauda_equina_stat": {
                    **share(t.cauda_equina_stat, t.cauda_equina),
                    "goal": f"{CAUDA_EQUINA_GOAL:g}%", "met": self.cauda_equina_met},
            },
            "level_of_concern": {lv: share(t.levels[lv], n) for lv in LEVELS},
            "referral": {p: share(t.referrals[p], n) for p in PRIORITIES},
            "exercise_held": share(t.held, n),
            "red_flag_answers": {i.name: {**share(t.answers[i.name], n), "class": i.kind}
                                 for i in self.items},
            "at_least_one_red_flag": share(t.any_flag, n),
            "rules": {r: share(t.rules[r], n) for r in _rules(t)},
        }

    def to_text(self) -> str:
        t = self.tally
        lines = [
            f"kb profile: {self.knowledge_base} ({self.directory})",
            self.describe_population(),
            "",
            "Key safety figures",
        ]
        goals = (f"<= {NO_SPECIFIC_FLAG_GOAL:g}%", f"{CAUDA_EQUINA_GOAL:g}%")
        verdicts = (self.no_specific_met, self.cauda_equina_met)
        for k, (row, goal, met) in enumerate(zip(self.rows()[:2], goals, verdicts,
                                                 strict=True)):
            verdict = ("no such patients" if met is None else "met" if met else "NOT MET")
            lines.append(f"  {row.label}: {_pct(row.percent)} ({row.count} of {row.of})"
                         f"   goal {goal}: {verdict}")
            if k == 0 and t.no_specific_by:
                lines.append("    referred by: " + ", ".join(
                    f"{r} ({t.no_specific_by[r]})" for r in _by_count(t.no_specific_by)))
        titles = {"level": f"Level of concern ({LEVEL_FACT})",
                  "referral": "Top referral priority", "held": "Exercise",
                  "failed": "Failures", "answer": 'Red-flag answers "yes" (the input mix)',
                  "rule": "Rules that fired (patients)"}
        section = "safety"
        rows = self.rows()[2:]
        width = max(len(r.label) for r in rows)
        for row in rows:
            if row.section != section:
                section = row.section
                lines += ["", titles[section]]
            kind = self._kind(row)
            lines.append(f"  {row.label:<{width}}  {_pct(row.percent):>6}  ({row.count}){kind}")
        return "\n".join(lines) + "\n"

    def _kind(self, row: Row) -> str:
        if row.section != "answer":
            return ""
        return next((f"  {i.kind}" for i in self.items if i.name == row.label), "")


def side_by_side(old: Profile, new: Profile) -> str:
    """The figures of two profiles of the same population, as ``kb diff`` prints them: OLD,
    NEW and the change in percentage points, counts beside each rate."""
    ot, nt = old.tally, new.tally
    rules = sorted(ot.rules.keys() | nt.rules.keys(),
                   key=lambda r: (-max(ot.rules[r], nt.rules[r]), r))
    items = list(dict.fromkeys([*(i.name for i in old.items), *(i.name for i in new.items)]))
    a, b = old.rows(rules, items), new.rows(rules, items)
    titles = {"safety": "Key safety figures (goals: <= 1%; 100%)",
              "level": "Level of concern", "referral": "Top referral priority",
              "held": "Exercise", "failed": "Failures", "answer": 'Red-flag answers "yes"',
              "rule": "Rules that fired (patients)"}
    labels = {"urgent-or-higher, no specific flag and at most one weak flag":
              "no specific flag, urgent or higher",
              "stat for cauda equina presentations": "cauda equina, stat"}
    width = max(len(labels.get(r.label, r.label)) for r in a)
    head = (f"Input population profile: {ot.patients} patients ({old.population})"
            if old.population else f"Primary-care profile: {ot.patients} patients, seed "
            f"{old.seed} (every red-flag question answered within the last 3 days)")
    lines = [head,
             f"  {'':<{width}}  {'OLD':>20}  {'NEW':>20}  {'change':>9}"]
    for tag, p in (("OLD", old), ("NEW", new)):
        if p.borrowed:
            lines.insert(1, f"  ({tag}'s fact catalog classifies no red-flag item; the "
                         f"classes of {p.borrowed} are used)")
    section = ""
    for x, y in zip(a, b, strict=True):
        if x.section != section:
            section = x.section
            lines.append(f" {titles[section]}")
        change = y.percent - x.percent
        mark = f"{change:+.1f} pp" if x.count != y.count or x.of != y.of else "-"
        lines.append(f"  {labels.get(x.label, x.label):<{width}}  {_share(x):>20}  "
                     f"{_share(y):>20}  {mark:>9}")
    return "\n".join(lines) + "\n"


def _share(r: Row) -> str:
    return f"{_pct(r.percent)} ({r.count}/{r.of})"


def _rules(t: ProfileTally) -> list[str]:
    return _by_count(t.rules)


def _by_count(c: Counter[str]) -> list[str]:
    return sorted(c, key=lambda r: (-c[r], r))


def _pct(p: float) -> str:
    return f"{p:.2f}%" if 0 < p < 0.1 else f"{p:.1f}%"


# --- running -------------------------------------------------------------------------------


def profile_versions(
    roots: Sequence[Path],
    *,
    patients: int,
    seed: int,
    as_of: datetime,
    workers: int | Where,
    progress: Callable[[int, int], None] | None = None,
    which: Sequence[str] = (),
    population: PopulationInput | None = None,
) -> list[Profile]:
    """Profiles of each knowledge base in ``roots`` over the same primary-care population
    (or over ``population``, a real one as bucket files). ``which`` labels the roots in load
    errors ("OLD", "NEW"); ``workers``: local processes, or where to run (a Dask scheduler)."""
    labels = tuple(which) or ("",) * len(roots)
    versions = _load_profiled(labels, roots)
    totals = [ProfileTally() for _ in versions]
    where = workers if isinstance(workers, Where) else Where(workers=workers)
    init = (labels, tuple(str(r) for r in roots))
    if population is not None:
        parts = run_in_buckets(population, bucket_sizes(population), where, progress,
                               Work(partial(_bucket_chunk, versions, as_of),
                                    partial(_worker_bucket, as_of), _init_worker, init))
    else:
        parts = run_in_chunks(patients, where, progress,
                              Work(partial(_chunk, versions, seed, as_of),
                                   partial(_worker_chunk, seed, as_of), _init_worker, init))
    for part in parts:
        for total, t in zip(totals, part, strict=True):
            total.merge(t)
    source = str(population.source) if population is not None else ""
    return [Profile(v.version.kb.ruleset_name, str(v.version.root), as_of, seed, t, v.items,
                    v.borrowed, source)
            for v, t in zip(versions, totals, strict=True)]


def profile_knowledge_base(root: Path, **options: Unpack[PopulationOptions]) -> Profile:
    """The profile of one knowledge base over ``patients`` synthetic patients (default 2000;
    seed 1; over ``population`` when given, a real population as bucket files; on the Dask
    ``scheduler`` when given; the options: ``PopulationOptions``). Raises
    ``KnowledgeBaseLoadError`` when it cannot be loaded and ``ProfileError`` when its
    red-flag items cannot be generated."""
    patients = options.get("patients", 2000)
    where = where_for(options, patients)
    return profile_versions(
        [root], patients=patients, seed=options.get("seed", 1),
        as_of=options.get("as_of") or DEFAULT_AS_OF, workers=where,
        progress=options.get("progress"), population=options.get("population"))[0]
