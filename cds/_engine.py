"""Running compiled rules in durable-rules, inside the engine safety rules.

The safety rules (docs/architecture.md) this module enforces:

1. no background threads: ``_QuietHost._run`` starts nothing, and timers are never used;
2. one live session per host: every evaluation holds ``_LOCK``; scale with processes;
3. ``delete_state`` always runs, in ``finally``;
4. negation is gated: every rule waits for its stratum marker, asserted after all input
   facts and after the earlier strata have settled;
5. action errors are surfaced: the session state's ``exception`` and our own dispatch errors
   fail the evaluation (no partial advice); sink rules make every fact type handled;
6. every fact has an explicit unique ``id``, and every input fact is checked to be present
   after evaluation;
7. one ruleset per ``{kb-id}@{version}``, registered once, never replaced;
8. ``pri`` is set explicitly in multiples of ten;
9. a new ruleset's first session fires a rule: durable-rules 2.0.28 corrupts memory and
   aborts the process (``free(): invalid pointer``) when the first session of a ruleset
   fires nothing and is deleted (found with the per-exercise follow-up rules; the starter
   knowledge base with only the ten core red-flag answers reproduces it), so registration
   runs one warm-up evaluation on facts built to satisfy a rule.
"""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

from durable import engine as _durable

from cds._compiler import CompiledKnowledgeBase, Literal
from cds._engine_result import EngineResult, FiringLog
from cds._errors import EngineError, KnowledgeBaseError, KnowledgeBaseProblem
from cds._facts import Fact

__all__ = ["RuleEngine"]


class _QuietHost(_durable.Host):  # type: ignore[misc]
    """A durable-rules host that starts no dispatcher or timer threads (safety rule 1)."""

    def _run(self) -> None:
        return None


_LOCK = threading.Lock()
_HOST: _QuietHost | None = None
_REGISTERED: dict[str, str] = {}  # ruleset name -> canonical definition JSON
_ACTIVE: dict[str, Any] = {}  # the one live session: ruleset, log, compiled, errors
_SIDS = itertools.count(1)


def _host() -> _QuietHost:
    global _HOST
    if _HOST is None:
        _HOST = _QuietHost()
    return _HOST


def _dispatch(ruleset: str, rule_index: int, term_index: int, c: Any) -> None:
    """Action of every compiled rule: record the firing, assert what is newly derived."""
    if _ACTIVE.get("ruleset") != ruleset:
        raise RuntimeError(f"action for {ruleset} outside its evaluation")
    log: FiringLog = _ACTIVE["log"]
    try:
        new = log.fire(rule_index, term_index)
    except EngineError as e:
        _ACTIVE["errors"].append(str(e))
        raise
    for name, value in new:
        c.assert_fact({"id": f"d:{name}", "t": "fact", "n": name, "v": value})


def _action(ruleset: str, rule_index: int, term_index: int) -> Any:
    # durable inspects the action's __code__ (one argument: synchronous), so no partial()
    def run(c: Any) -> None:
        _dispatch(ruleset, rule_index, term_index, c)

    return run


class RuleEngine:
    """Evaluates facts against one compiled knowledge base in durable-rules."""

    def __init__(self, compiled: CompiledKnowledgeBase) -> None:
        self.compiled = compiled
        self.name = compiled.name
        self._read = compiled.read_names
        definition = compiled.durable_definition()
        canonical = json.dumps(definition, sort_keys=True)
        warm: list[Fact] | None = None
        with _LOCK:
            known = _REGISTERED.get(self.name)
            if known is None:
                for key, rule in definition.items():
                    if key.startswith("sink:"):
                        rule["run"] = _noop
                    else:
                        ri, ti = (int(x) for x in key.split(":"))
                        rule["run"] = _action(self.name, ri, ti)
                _host().register_rulesets({self.name: definition})
                _REGISTERED[self.name] = canonical
                warm = _firing_facts(compiled)
            elif known != canonical:
                raise KnowledgeBaseError(
                    [
                        KnowledgeBaseProblem(
                            "manifest.yaml", None, None,
                            f"a different knowledge base named {self.name} is already loaded "
                            "in this process; give the changed one a new version",
                        )
                    ]
                )
        if warm is not None:  # safety rule 9
            self.evaluate(warm)

    def evaluate(self, facts: list[Fact]) -> EngineResult:
        """Derive everything the rules derive from ``facts``.

        Only the facts some rule reads are asserted: each asserted fact costs the engine
        about 15 us, and a fact no rule reads cannot change a result (the reference
        evaluator, which sees every fact, checks this on every property test).
        """
        host = _host()
        read = self._read
        with _LOCK:
            sid = f"s{next(_SIDS)}"
            log = FiringLog(self.compiled)
            _ACTIVE.update(ruleset=self.name, log=log, errors=[])
            try:
                messages: list[dict[str, Any]] = [
                    {"sid": sid, "id": f"f:{f.name}", "t": "fact", "n": f.name, "v": f.value}
                    for f in facts
                    if f.name in read
                ]
                if messages:
                    self._check(host.assert_facts(self.name, messages))
                for k in range(len(self.compiled.strata)):
                    marker = {"sid": sid, "id": f"s:{k}", "t": "stratum", "s": k}
                    self._check(host.assert_fact(self.name, marker))
                present = {m["id"] for m in host.get_facts(self.name, sid)}
                lost = sorted(str(m["id"]) for m in messages if m["id"] not in present)
                if lost:
                    raise EngineError("input facts lost inside the engine", lost)
                return log.result()
            except EngineError:
                raise
            except Exception as e:  # durable raises bare Exceptions; none may escape raw
                raise EngineError(f"rule engine failed: {type(e).__name__}") from e
            finally:
                errors = list(_ACTIVE.get("errors", []))
                _ACTIVE.clear()
                try:
                    host.delete_state(self.name, sid)
                except Exception:  # pragma: no cover - nothing left to clean
                    pass
                if errors:
                    raise EngineError(f"rule action failed: {errors[0]}", errors)

    @staticmethod
    def _check(state: Any) -> None:
        if isinstance(state, dict) and "exception" in state:
            raise EngineError("rule action failed inside the engine", [str(state["exception"])])


def _satisfying(lit: Literal) -> Any:
    v = lit.value
    match lit.op:
        case "is" | "ge" | "le":
            return v
        case "in":
            return v[0]
        case "gt":
            return v + 1
        case "lt":
            return v - 1
        case "present":
            return True
    return None  # is-not, not-in: no value known to satisfy; the caller checks


def _firing_facts(compiled: CompiledKnowledgeBase) -> list[Fact] | None:
    """Facts under which some rule fires (checked with the reference evaluator), for the
    warm-up of safety rule 9; None when none is found (then nothing can be done)."""
    from cds._reference import evaluate_reference  # the oracle: no engine involved

    for rule in compiled.rules:
        for term in rule.terms:
            facts: dict[str, Any] = {}
            for lit in term:
                if lit.op == "missing":
                    continue
                value = _satisfying(lit)
                if value is None:
                    break
                facts[lit.fact] = value
            else:
                candidate = [Fact(n, v) for n, v in sorted(facts.items())]
                if evaluate_reference(compiled, candidate).firings:
                    return candidate
    return None


def _noop(c: Any) -> None:  # pragma: no cover - sinks never complete their join
    return None
