"""Why the plan says what it says, and why it does not say something else.

``explain_plan`` walks every output item (alert, exercise proposed or on hold, exercise to
avoid, deferred exercise, data gap, finding, classification) back through the rules that
produced it and the facts those rules read, down to the input facts and their ``sources``
(the references of the records the clinician made). Facts a rule relied on being absent are
shown as *missing*, never as false.

``why_not`` answers "why is X not in the plan?" for an exercise, a rule, an alert code or a
derived fact: which rules could have produced it, and for each the first condition (in
document order, through all/any/not/at-least) that is false or unknown, with the values it
saw. Conditions are evaluated with the same three-valued reading as the compiler: a test on
a missing fact is *unknown*, and ``not`` of unknown stays unknown.

Only ``Plan`` and the knowledge base are read, so an explanation can be made for any plan
(from the CLI, a scenario run or a test) without evaluating the patient again.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from cds._compiler import CompiledKnowledgeBase
from cds._compiler import Literal as Lit
from cds._errors import ExplainTargetError
from cds._facts import Derivation, Fact, Scalar
from cds._kb_schema import AllOf, AnyOf, AtLeast, Condition, FactTest, NoneOf, Param, ParamTest
from cds._knowledge_base import KnowledgeBase, derived_names
from cds._plan import Plan
from cds._reference import literal_holds

__all__ = [
    "ConditionTrace",
    "ExplainTargetError",
    "Explainer",
    "FactNode",
    "ItemExplanation",
    "PlanExplanation",
    "RuleNode",
    "RuleVerdict",
    "TargetExplanation",
    "Truth",
    "render_item",
    "render_plan_explanation",
    "render_target",
    "render_verdict",
    "trace_condition",
]

Truth = Literal["true", "false", "unknown"]

_NEGATE = {
    "is": "is-not", "is-not": "is", "lt": "ge", "le": "gt", "gt": "le", "ge": "lt",
    "in": "not-in", "not-in": "in", "present": "missing", "missing": "present",
}
_OP_WORDS = {
    "is": "is", "is-not": "is not", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
    "in": "is one of", "not-in": "is none of",
}
_OUTPUT_PREFIXES = ("alert.", "recommend.", "veto.", "gap.", "note.", "limit.")


def _show(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return str(v)


# --- the chain: output item -> rules -> facts -> input records ------------------------------


@dataclass(frozen=True)
class FactNode:
    """One fact in a chain. ``status``: ``input`` (as recorded), ``computed`` (arithmetic on
    recorded items, e.g. the lower side), ``derived`` (by the rules in ``because``) or
    ``missing`` (no usable value; a rule relied on that)."""

    name: str
    status: Literal["input", "computed", "derived", "missing"]
    value: Scalar | None
    description: str | None
    sources: tuple[str, ...] = ()
    because: tuple[RuleNode, ...] = ()
    repeated: bool = False  # already explained higher up in the same tree

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fact": self.name, "status": self.status}
        if self.status != "missing":
            out["value"] = self.value
        if self.description:
            out["description"] = self.description
        if self.sources:
            out["sources"] = list(self.sources)
        if self.because:
            out["because"] = [r.to_json() for r in self.because]
        if self.repeated:
            out["repeated"] = True
        return out


@dataclass(frozen=True)
class RuleNode:
    """One firing of one rule: the tests that held, and the facts behind them."""

    rule_id: str
    title: str
    tests: tuple[str, ...]
    facts: tuple[FactNode, ...]

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule_id, "title": self.title, "tests": list(self.tests),
                "facts": [f.to_json() for f in self.facts]}


@dataclass(frozen=True)
class ItemExplanation:
    """One output item of the plan and the firings that produced it."""

    kind: str  # alert | exercise | avoid | deferred | data-gap | finding | classification
    id: str
    title: str
    outcome: str
    rules: tuple[RuleNode, ...]

    @property
    def sources(self) -> tuple[str, ...]:
        """Every input record the chain reaches."""
        out: set[str] = set()

        def walk(rules: Iterable[RuleNode]) -> None:
            for r in rules:
                for f in r.facts:
                    out.update(f.sources)
                    walk(f.because)

        walk(self.rules)
        return tuple(sorted(out))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "title": self.title, "outcome": self.outcome,
                "sources": list(self.sources), "rules": [r.to_json() for r in self.rules]}


@dataclass(frozen=True)
class PlanExplanation:
    subject: str
    knowledge_base: str
    as_of: str
    items: tuple[ItemExplanation, ...]

    def item(self, kind: str, ident: str) -> ItemExplanation:
        for it in self.items:
            if it.kind == kind and it.id == ident:
                return it
        raise KeyError((kind, ident))

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "knowledgeBase": self.knowledge_base,
                "asOf": self.as_of, "items": [i.to_json() for i in self.items]}


# --- three-valued condition traces ----------------------------------------------------------


@dataclass(frozen=True)
class ConditionTrace:
    """A condition evaluated three-valued, with what it saw. ``path`` is where it is in the
    rule (``when.any[3].all[0]``); ``seen`` holds each fact read and its value (``None``:
    missing)."""

    path: str
    text: str
    truth: Truth
    seen: tuple[tuple[str, Scalar | None], ...] = ()
    children: tuple[ConditionTrace, ...] = ()
    kind: str = "fact"  # fact | all | any | not | at-least | param

    def failing(self) -> tuple[ConditionTrace, ...]:
        """The leaves that stop this condition from being true, first in document order:
        for ``all`` the first child that is not true; for ``any`` and ``at-least`` each child
        that is not true; for ``not`` whatever made the inner condition true or unknown."""
        if self.truth == "true":
            return ()
        if self.kind in ("fact", "param"):
            return (self,)
        if self.kind == "all":
            for c in self.children:
                if c.truth != "true":
                    return c.failing()
            return ()
        if self.kind == "not":
            inner = self.children[0]
            if inner.truth == "unknown":
                return inner.failing()
            return (self,)  # the inner condition holds: the node itself is the reason
        return tuple(x for c in self.children if c.truth != "true" for x in c.failing())

    def missing(self) -> tuple[str, ...]:
        return tuple(sorted({n for n, v in self.all_seen() if v is None}))

    def all_seen(self) -> tuple[tuple[str, Scalar | None], ...]:
        """Every fact read anywhere under this condition, with its value, once each."""
        out = dict(self.seen)
        for c in self.children:
            out.update(c.all_seen())
        return tuple(out.items())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "condition": self.text, "truth": self.truth}
        if self.seen:
            out["saw"] = {n: ("(missing)" if v is None else v) for n, v in self.seen}
        if self.children:
            out["children"] = [c.to_json() for c in self.children]
        return out

    def saw_text(self) -> str:
        return ", ".join(f"{n} = {'MISSING' if v is None else _show(v)}"
                         for n, v in self.all_seen())


def _three(lit: Lit, values: dict[str, Any]) -> Truth:
    """The compiler's reading of one test: true if it holds, false if its negation holds,
    otherwise unknown (the fact is missing, or not comparable)."""
    if literal_holds(lit, values):
        return "true"
    neg = Lit(lit.fact, _NEGATE[lit.op], None if lit.op in ("present", "missing") else lit.value)
    return "false" if literal_holds(neg, values) else "unknown"


def trace_condition(
    cond: Condition, values: dict[str, Any], parameter: Any, path: str = "when"
) -> ConditionTrace:
    """Evaluate ``cond`` over ``values`` three-valued (Kleene), as the compiled rule reads it:
    the result is ``true`` exactly when some compiled term of the condition holds."""
    if isinstance(cond, FactTest):
        op, operand = cond.operator()
        shown = _show(operand)
        if isinstance(operand, Param):
            operand = parameter(operand.param)
            shown = f"{_show(operand)} (parameter {cond.operator()[1].param})"
        if op in ("present", "missing"):
            text = f"{cond.fact} is {'recorded' if op == 'present' else 'missing'}"
            operand = None
        else:
            text = f"{cond.fact} {_OP_WORDS[op]} {shown}"
        leaf = _three(Lit(cond.fact, op, operand), values)
        return ConditionTrace(path, text, leaf, ((cond.fact, values.get(cond.fact)),))
    if isinstance(cond, ParamTest):
        actual = parameter(cond.param)
        ok = actual == cond.is_
        return ConditionTrace(path, f"parameter {cond.param} is {_show(cond.is_)} "
                              f"(it is {_show(actual)})", "true" if ok else "false", kind="param")
    if isinstance(cond, NoneOf):
        inner = trace_condition(cond.not_, values, parameter, f"{path}.not")
        flipped: dict[Truth, Truth] = {"true": "false", "false": "true", "unknown": "unknown"}
        return ConditionTrace(path, "not", flipped[inner.truth], children=(inner,), kind="not")
    if isinstance(cond, AtLeast):
        k = int(parameter(cond.at_least.param)) if isinstance(cond.at_least, Param) \
            else cond.at_least
        kids = tuple(trace_condition(c, values, parameter, f"{path}.of[{i}]")
                     for i, c in enumerate(cond.of))
        n_true = sum(c.truth == "true" for c in kids)
        n_unknown = sum(c.truth == "unknown" for c in kids)
        t: Truth = "true" if n_true >= k else ("false" if n_true + n_unknown < k else "unknown")
        label = f"at least {k} of {len(kids)}"
        if isinstance(cond.at_least, Param):
            label += f" (parameter {cond.at_least.param})"
        return ConditionTrace(path, f"{label}: {n_true} true, {n_unknown} unknown", t,
                              children=kids, kind="at-least")
    if isinstance(cond, AllOf):
        kids = tuple(trace_condition(c, values, parameter, f"{path}.all[{i}]")
                     for i, c in enumerate(cond.all))
        truths = {c.truth for c in kids}
        t = "false" if "false" in truths else ("unknown" if "unknown" in truths else "true")
        return ConditionTrace(path, f"all of {len(kids)}", t, children=kids, kind="all")
    assert isinstance(cond, AnyOf)
    kids = tuple(trace_condition(c, values, parameter, f"{path}.any[{i}]")
                 for i, c in enumerate(cond.any))
    truths = {c.truth for c in kids}
    t = "true" if "true" in truths else ("unknown" if "unknown" in truths else "false")
    return ConditionTrace(path, f"any of {len(kids)}", t, children=kids, kind="any")


@dataclass(frozen=True)
class RuleVerdict:
    """Whether a rule fired for this patient and, if not, why not."""

    rule_id: str
    title: str
    fired: bool
    trace: ConditionTrace
    firings: tuple[RuleNode, ...] = ()  # when it fired: the chain
    # for a missing or different derived fact the failing test read: why its rules did not
    # produce it (one level deeper each time, up to a limit)
    upstream: tuple[tuple[str, tuple[RuleVerdict, ...]], ...] = ()
    note: str | None = None

    @property
    def first_failing(self) -> tuple[ConditionTrace, ...]:
        return self.trace.failing()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule_id, "title": self.title, "fired": self.fired}
        if self.fired:
            out["firings"] = [r.to_json() for r in self.firings]
        else:
            out["condition"] = self.trace.truth
            out["firstFailing"] = [
                {"path": c.path, "condition": c.text, "truth": c.truth,
                 "saw": {n: ("(missing)" if v is None else v) for n, v in c.seen},
                 "missing": list(c.missing())}
                for c in self.first_failing
            ]
            out["trace"] = self.trace.to_json()
        if self.upstream:
            out["upstream"] = {n: [v.to_json() for v in vs] for n, vs in self.upstream}
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class TargetExplanation:
    """The answer to "why (not) X?": a headline, the chains of what happened, and for what
    did not happen, the verdict of each rule that could have made it happen."""

    target: str
    kind: str  # exercise | rule | alert | fact
    present: bool
    answer: str
    items: tuple[ItemExplanation, ...] = ()
    verdicts: tuple[RuleVerdict, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "kind": self.kind, "present": self.present,
                "answer": self.answer, "items": [i.to_json() for i in self.items],
                "rules": [v.to_json() for v in self.verdicts]}


# --- the explainer ----------------------------------------------------------------------------


@dataclass
class Explainer:
    """Explains plans made with one knowledge base (compiled with the same parameters)."""

    kb: KnowledgeBase
    compiled: CompiledKnowledgeBase
    max_depth: int = 2  # how far why-not follows missing derived facts upstream
    _derives: dict[str, tuple[str, ...]] = field(default_factory=dict, init=False)
    _stratum: dict[str, int] = field(default_factory=dict, init=False)
    _terms: dict[str, tuple[tuple[Lit, ...], ...]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for r in self.compiled.rules:
            self._derives[r.rule_id] = tuple(n for n, _ in r.derives)
            self._stratum[r.rule_id] = r.stratum
            self._terms[r.rule_id] = r.terms

    # -- shared state of one plan

    def _state(self, plan: Plan, inputs: Iterable[Fact] | None) -> _PlanState:
        return _PlanState(self, plan, None if inputs is None else {f.name: f for f in inputs})

    def explain_plan(self, plan: Plan, inputs: Iterable[Fact] | None = None) -> PlanExplanation:
        """Every output item with its chain. ``inputs`` are the facts as read (before scores
        were computed), so computed values can be told apart from recorded ones."""
        st = self._state(plan, inputs)
        return PlanExplanation(plan.subject, plan.knowledge_base, plan.as_of.isoformat(),
                               tuple(st.items()))

    def why(self, plan: Plan, target: str, inputs: Iterable[Fact] | None = None
            ) -> TargetExplanation:
        """Why X is (or is not) in the plan: X is a rule id, exercise id, alert code or fact."""
        st = self._state(plan, inputs)
        kind, ident = self.resolve(target)
        if kind == "rule":
            return st.why_rule(ident)
        if kind == "exercise":
            return st.why_exercise(ident)
        if kind == "alert":
            return st.why_derived(f"alert.{ident}", "alert", ident)
        return st.why_derived(ident, "fact", ident)

    def resolve(self, target: str) -> tuple[str, str]:
        """What kind of thing ``target`` names; an unknown one raises with near matches."""
        rule_ids = [r.id for r in self.kb.rules]
        if target in rule_ids:
            return "rule", target
        upper = {r.upper(): r for r in rule_ids}
        if target.upper() in upper and "-" in target and target[:2].isalpha():
            return "rule", upper[target.upper()]
        if target in self.kb.exercises:
            return "exercise", target
        if target in self.kb.alerts:
            return "alert", target
        if target.startswith("alert.") and target[6:] in self.kb.alerts:
            return "alert", target[6:]
        if target in self.kb.facts:
            return "fact", target
        candidates = rule_ids + list(self.kb.exercises) + list(self.kb.alerts) + list(
            self.kb.facts)
        near = difflib.get_close_matches(target, candidates, n=5, cutoff=0.6)
        if not near:
            low = {c.lower(): c for c in candidates}
            near = [low[c] for c in difflib.get_close_matches(target.lower(), list(low), n=5,
                                                               cutoff=0.5)]
        raise ExplainTargetError(target, near)


class _PlanState:
    """Everything about one plan that the explanations share (values per stratum, the
    derivations of each derived fact)."""

    def __init__(self, ex: Explainer, plan: Plan, inputs: dict[str, Fact] | None) -> None:
        self.ex = ex
        self.kb = ex.kb
        self.plan = plan
        self.facts = {f.name: f for f in plan.facts}
        self.inputs = inputs
        self.derived = plan.derived_values
        self.by_name: dict[str, list[Derivation]] = {}
        for d in plan.firings:
            for name in ex._derives.get(d.rule_id, ()):
                self.by_name.setdefault(name, []).append(d)
        self.fired = {d.rule_id for d in plan.firings}
        # the first stratum at which each derived fact exists
        self.born: dict[str, int] = {
            n: min(ex._stratum[d.rule_id] for d in ds) for n, ds in self.by_name.items()
        }
        self.final_values: dict[str, Any] = {n: f.value for n, f in self.facts.items()}
        self.final_values.update(self.derived)

    # -- chains

    def values_at(self, stratum: int) -> dict[str, Any]:
        """What a rule of ``stratum`` saw: the inputs and what earlier strata (and its own)
        derived."""
        vals: dict[str, Any] = {n: f.value for n, f in self.facts.items()}
        vals.update({n: v for n, v in self.derived.items() if self.born.get(n, 99) <= stratum})
        return vals

    def fact_node(self, name: str, seen: frozenset[str]) -> FactNode:
        desc = self.kb.facts[name].description if name in self.kb.facts else None
        f = self.facts.get(name)
        if f is not None:
            status: Literal["input", "computed"] = "input"
            if self.inputs is not None:
                orig = self.inputs.get(name)
                if orig is None or orig.value != f.value or type(orig.value) is not type(f.value):
                    status = "computed"
            return FactNode(name, status, f.value, desc, f.sources)
        if name in self.derived:
            if name in seen:
                return FactNode(name, "derived", self.derived[name], desc,  # type: ignore[arg-type]
                                repeated=True)
            rules = tuple(self.rule_node(d, seen | {name}) for d in self.by_name.get(name, []))
            return FactNode(name, "derived", self.derived[name], desc,  # type: ignore[arg-type]
                            because=rules)
        return FactNode(name, "missing", None, desc)

    def rule_node(self, d: Derivation, seen: frozenset[str]) -> RuleNode:
        rule = self.kb.rule(d.rule_id)
        want = set(d.used) | set(d.absent)
        vals = self.values_at(self.ex._stratum[d.rule_id])
        tests: tuple[str, ...] = ()
        for term in self.ex._terms.get(d.rule_id, ()):
            if {lit.fact for lit in term} == want and all(literal_holds(x, vals) for x in term):
                tests = tuple(_describe(x) for x in term)
                break
        facts = tuple(self.fact_node(n, seen) for n in d.used)
        gone = tuple(FactNode(n, "missing", None, self.kb.facts[n].description
                              if n in self.kb.facts else None) for n in d.absent)
        return RuleNode(d.rule_id, rule.title, tests, facts + gone)

    def chain(self, name: str) -> tuple[RuleNode, ...]:
        return tuple(self.rule_node(d, frozenset({name})) for d in self.by_name.get(name, []))

    def items(self) -> list[ItemExplanation]:
        plan, kb = self.plan, self.kb
        out: list[ItemExplanation] = []
        for a in plan.alerts:
            what = f"{a.level}"
            if a.referral:
                what += f", referral {a.referral.priority} to {a.referral.to}"
            if a.holds_exercise:
                what += ", holds all exercise"
            out.append(ItemExplanation("alert", a.code, a.display, what,
                                       self.chain(f"alert.{a.code}")))
        held_by = [a.code for a in plan.alerts if a.holds_exercise]
        for x in plan.exercises:
            what = "proposed" if x.status == "proposed" else (
                f"on hold: held by {', '.join(held_by)}" if held_by else x.status)
            out.append(ItemExplanation("exercise", x.exercise_id, x.title, what,
                                       self.chain(f"recommend.{x.exercise_id}")))
        for av in plan.avoid:
            rules = tuple(r for rid in av.rule_ids for r in self.chain(f"veto.{rid}"))
            out.append(ItemExplanation("avoid", av.exercise_id, av.title,
                                       f"do not perform: {av.reason}", rules))
        for de in plan.deferred:
            out.append(ItemExplanation("deferred", de.exercise_id, de.title,
                                       f"deferred: {de.reason}",
                                       self.chain(f"recommend.{de.exercise_id}")))
        for g in plan.data_gaps:
            miss = ", ".join(g.missing) or "(none now)"
            out.append(ItemExplanation("data-gap", g.rule_id, g.detail, f"missing: {miss}",
                                       self.chain(f"gap.{g.rule_id}")))
        for name in sorted(self.derived):
            if name.startswith(_OUTPUT_PREFIXES) or name not in kb.facts:
                continue
            kind = "classification" if self._is_classification(name) else "finding"
            out.append(ItemExplanation(kind, name, kb.facts[name].description,
                                       f"= {_show(self.derived[name])}", self.chain(name)))
        return out

    def _is_classification(self, name: str) -> bool:
        return any(a.classification is not None and a.classification.name == name
                   for d in self.by_name.get(name, []) for a in self.kb.rule(d.rule_id).then)

    # -- why not

    def verdict(self, rule_id: str, depth: int = 0) -> RuleVerdict:
        rule = self.kb.rule(rule_id)
        vals = self.values_at(self.ex._stratum[rule_id])
        trace = trace_condition(rule.when, vals, self.kb.parameter)
        if rule_id in self.fired:
            firings = tuple(self.rule_node(d, frozenset()) for d in self.plan.firings
                            if d.rule_id == rule_id)
            return RuleVerdict(rule_id, rule.title, True, trace, firings)
        upstream: list[tuple[str, tuple[RuleVerdict, ...]]] = []
        note = None
        if trace.truth == "true":  # cannot happen with a consistent engine; say so plainly
            note = ("the condition holds on the final values but the rule did not fire; "
                    "a fact it reads may have been derived only in a later stratum")
        if depth < self.ex.max_depth:
            for leaf in trace.failing():
                for name, value in leaf.seen:
                    producers = self.producers(name)
                    if not producers or any(n == name for n, _ in upstream):
                        continue
                    if value is None or leaf.truth == "false":
                        upstream.append((name, tuple(self.verdict(p, depth + 1)
                                                     for p in producers
                                                     if p not in self.fired or value is None)))
        upstream = [(n, vs) for n, vs in upstream if vs]
        return RuleVerdict(rule_id, rule.title, False, trace, (), tuple(upstream), note)

    def producers(self, name: str) -> list[str]:
        return [r.id for r in self.kb.rules
                if r.id in self.ex._stratum and name in derived_names(r)]

    def why_rule(self, rule_id: str) -> TargetExplanation:
        if rule_id not in self.ex._stratum:
            scope = getattr(self.kb.rule(rule_id), "scope", "another scope")
            return TargetExplanation(
                rule_id, "rule", False,
                f"{rule_id} is not part of this evaluation: it is a rule of scope '{scope}' "
                "(follow-up rules run once per exercise of the previous plan).")
        v = self.verdict(rule_id)
        title = self.kb.rule(rule_id).title
        if v.fired:
            fates = self._fates(rule_id)
            answer = f"{rule_id} ({title}) fired." + (f" {fates}" if fates else "")
        else:
            answer = f"{rule_id} ({title}) did not fire: {_headline(v)}"
        return TargetExplanation(rule_id, "rule", v.fired, answer, (), (v,))

    def _fates(self, rule_id: str) -> str:
        """What became of a fired rule's recommendations (vetoed, held, deferred)."""
        plan = self.plan
        avoided = {a.exercise_id: a for a in plan.avoid}
        deferred = {d.exercise_id: d for d in plan.deferred}
        listed = {x.exercise_id: x for x in plan.exercises}
        out = []
        for a in self.kb.rule(rule_id).then:
            if a.recommend is None:
                continue
            e = a.recommend.exercise
            if e in avoided:
                out.append(f"Its recommendation of {e} was vetoed by "
                           f"{', '.join(avoided[e].rule_ids)}.")
            elif e in deferred:
                out.append(f"Its recommendation of {e} was deferred: {deferred[e].reason}.")
            elif e in listed and listed[e].status != "proposed":
                out.append(f"Its recommendation of {e} is on hold.")
        return " ".join(out)

    def why_exercise(self, ex_id: str) -> TargetExplanation:
        plan = self.plan
        title = self.kb.exercises[ex_id].title
        recommenders = [r.id for r in self.kb.rules for a in r.then if r.id in self.ex._stratum
                        and a.recommend is not None and a.recommend.exercise == ex_id]
        items = {(i.kind, i.id): i for i in self.items()}
        listed = {x.exercise_id: x for x in plan.exercises}
        avoided = {a.exercise_id: a for a in plan.avoid}
        deferred = {d.exercise_id: d for d in plan.deferred}
        recommended = f"recommend.{ex_id}" in self.derived
        if ex_id in listed and listed[ex_id].status == "proposed":
            return TargetExplanation(ex_id, "exercise", True, f"{ex_id} ({title}) is proposed.",
                                     (items[("exercise", ex_id)],))
        if ex_id in listed:
            holders = [items[("alert", a.code)] for a in plan.alerts if a.holds_exercise]
            return TargetExplanation(
                ex_id, "exercise", True,
                f"{ex_id} ({title}) was recommended, but all exercise is on hold by "
                f"{', '.join(h.id for h in holders)}.",
                (items[("exercise", ex_id)], *holders))
        if ex_id in avoided:
            av = avoided[ex_id]
            head = (f"{ex_id} ({title}) was recommended by "
                    f"{', '.join(sorted({d.rule_id for d in self.by_name[f'recommend.{ex_id}']}))}"
                    ", but" if recommended else f"{ex_id} ({title})")
            answer = (f"{head} matches a veto of {', '.join(av.rule_ids)}: {av.reason}")
            chain: tuple[ItemExplanation, ...] = (items[("avoid", ex_id)],)
            verdicts = () if recommended else tuple(self.verdict(r) for r in recommenders)
            return TargetExplanation(ex_id, "exercise", False, answer, chain, verdicts)
        if ex_id in deferred:
            return TargetExplanation(
                ex_id, "exercise", False,
                f"{ex_id} ({title}) was recommended but deferred: {deferred[ex_id].reason}.",
                (items[("deferred", ex_id)],))
        if not recommenders:
            return TargetExplanation(ex_id, "exercise", False,
                                     f"{ex_id} ({title}): no rule recommends it.")
        verdicts = tuple(self.verdict(r) for r in recommenders)
        heads = "; ".join(f"{v.rule_id}: {_headline(v)}" for v in verdicts)
        return TargetExplanation(ex_id, "exercise", False,
                                 f"{ex_id} ({title}) was not recommended. {heads}", (), verdicts)

    def why_derived(self, name: str, kind: str, ident: str) -> TargetExplanation:
        producers = self.producers(name)
        if name in self.derived:
            rules = self.chain(name)
            desc = ident if kind == "alert" else (self.kb.facts[name].description
                                                  if name in self.kb.facts else name)
            item = ItemExplanation(kind, ident, desc, f"= {_show(self.derived[name])}", rules)
            return TargetExplanation(ident, kind, True,
                                     f"{ident} is {_show(self.derived[name])}, derived by "
                                     f"{', '.join(r.rule_id for r in rules)}.", (item,))
        if name in self.facts:
            f = self.facts[name]
            node = FactNode(name, "input", f.value, None, f.sources)
            item = ItemExplanation(kind, ident, name, f"= {_show(f.value)}",
                                   (RuleNode("(input)", "recorded", (), (node,)),))
            return TargetExplanation(ident, kind, True,
                                     f"{ident} = {_show(f.value)} was recorded in the input.",
                                     (item,))
        if not producers:
            what = "no rule derives it" if kind == "alert" or (
                name in self.kb.facts and self.kb.facts[name].derived) else \
                "it is an input fact and the input has no usable value for it (missing)"
            return TargetExplanation(ident, kind, False, f"{ident} is absent: {what}.")
        verdicts = tuple(self.verdict(r) for r in producers)
        heads = "; ".join(f"{v.rule_id}: {_headline(v)}" for v in verdicts)
        return TargetExplanation(ident, kind, False, f"{ident} is absent. {heads}", (),
                                 verdicts)


def _describe(lit: Lit) -> str:
    if lit.op == "missing":
        return f"{lit.fact} is missing"
    if lit.op == "present":
        return f"{lit.fact} is recorded"
    return f"{lit.fact} {_OP_WORDS[lit.op]} {_show(lit.value)}"


def _headline(v: RuleVerdict) -> str:
    """One sentence: the first condition that failed and what it saw."""
    if v.fired:
        return "it fired"
    parts = []
    for leaf in v.first_failing[:3]:
        if leaf.truth == "unknown":
            miss = ", ".join(leaf.missing()) or "a value that cannot be compared"
            parts.append(f"'{leaf.text}' is UNKNOWN because {miss} is missing")
        elif leaf.kind == "not":
            inner = leaf.children[0]
            saw = ", ".join(f"{n} = {_show(x)}" for n, x in inner.all_seen() if x is not None)
            parts.append(f"'not ({inner.text})' is false because its condition holds"
                         + (f" (saw {saw})" if saw else ""))
        else:
            saw = leaf.saw_text()
            parts.append(f"'{leaf.text}' is false" + (f" (saw {saw})" if saw else ""))
    more = len(v.first_failing) - 3
    tail = f" (+{more} more)" if more > 0 else ""
    return ("; ".join(parts) + tail) if parts else f"its condition is {v.trace.truth}"


# --- plain text -------------------------------------------------------------------------------

_KIND_LABEL = {
    "alert": "ALERT", "exercise": "EXERCISE", "avoid": "AVOID", "deferred": "DEFERRED",
    "data-gap": "DATA GAP", "finding": "FINDING", "classification": "CLASSIFICATION",
    "fact": "FACT", "rule": "RULE",
}


def _fact_lines(f: FactNode, pad: str) -> list[str]:
    if f.status == "missing":
        return [f"{pad}{f.name}: MISSING (no usable value; the rule relied on that)"]
    src = f"  [{', '.join(f.sources)}]" if f.sources else ""
    tag = {"input": "", "computed": " (computed from recorded items)",
           "derived": " (derived)"}[f.status]
    if f.repeated:
        tag = " (derived, explained above)"
    lines = [f"{pad}{f.name} = {_show(f.value)}{tag}{src}"]
    for r in f.because:
        lines += _rule_lines(r, pad + "  ")
    return lines


def _rule_lines(r: RuleNode, pad: str) -> list[str]:
    lines = [f"{pad}<- {r.rule_id} {r.title}"]
    if r.tests:
        lines.append(f"{pad}   because: {'; '.join(r.tests)}")
    for f in r.facts:
        lines += _fact_lines(f, pad + "   ")
    return lines


def render_item(item: ItemExplanation, pad: str = "") -> list[str]:
    """An output item as an indented tree: rules, facts, values, input record references."""
    label = _KIND_LABEL.get(item.kind, item.kind.upper())
    lines = [f"{pad}{label} {item.id}: {item.title} ({item.outcome})"]
    for r in item.rules:
        lines += _rule_lines(r, pad + "  ")
    return lines


def render_plan_explanation(e: PlanExplanation) -> str:
    lines = [f"{e.subject}, knowledge base {e.knowledge_base}, as of {e.as_of}", ""]
    if not e.items:
        lines.append("The plan has no alerts, exercises or findings.")
    for item in e.items:
        lines += render_item(item)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _trace_lines(t: ConditionTrace, pad: str, first: set[str]) -> list[str]:
    mark = {"true": "true", "false": "FALSE", "unknown": "UNKNOWN"}[t.truth]
    saw = f"   (saw {t.saw_text()})" if t.seen else ""
    arrow = "   <-- first failing" if t.path in first else ""
    lines = [f"{pad}[{mark}] {t.text}{saw}{arrow}"]
    for c in t.children:
        lines += _trace_lines(c, pad + "    ", first)
    return lines


def render_verdict(v: RuleVerdict, pad: str = "") -> list[str]:
    if v.fired:
        lines = [f"{pad}{v.rule_id} ({v.title}): fired"]
        for r in v.firings:
            lines += _rule_lines(r, pad + "  ")
        return lines
    lines = [f"{pad}{v.rule_id} ({v.title}): did not fire; its condition is "
             f"{v.trace.truth.upper()}"]
    lines.append(f"{pad}  first failing: {_headline(v)}")
    if v.note:
        lines.append(f"{pad}  note: {v.note}")
    lines += _trace_lines(v.trace, pad + "  ", {c.path for c in v.first_failing})
    for name, verdicts in v.upstream:
        lines.append(f"{pad}  {name} was not derived as needed; the rules that derive it:")
        for u in verdicts:
            lines += render_verdict(u, pad + "    ")
    return lines


def render_target(t: TargetExplanation) -> str:
    lines = [t.answer, ""]
    for item in t.items:
        lines += render_item(item)
        lines.append("")
    for v in t.verdicts:
        lines += render_verdict(v)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
