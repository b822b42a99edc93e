"""Running compiled rules in durable-rules, inside the engine safety rules.

The safety rules (docs/architecture.md) this module enforces:

1. no background threads: no durable ``Host`` (whose dispatcher and timer threads these
   would be) is made; rulesets are created in durable's C layer (``_create``) and timers are
   never used;
2. one live session at a time: every evaluation holds ``_LOCK``; scale with processes;
3. no session outlives its evaluation: each evaluation has a new session, and
   ``delete_state`` runs in ``finally``; facts are never retracted (retracting a fact
   that a completed action matched makes durable-rules 2.0.28 write outside its memory:
   the comment above ``_SIDS``);
4. negation is gated: a term that tests the absence of an input fact tests it on the
   input message, complete when it arrives; one that tests the absence of a derived fact
   waits for the stratum marker after which every such fact is final (a folded term for
   its own stratum's: rule 14); markers go in
   order, each after the last has settled; a term with value tests only needs none when
   its facts never arrive after its stratum's turn (``CompiledKnowledgeBase.waits_for``
   gives the argument);
5. action errors are surfaced: actions are taken from durable's C layer and run here
   (``RuleEngine._settle``), so an error in one (two rules deriving different values)
   abandons the action and fails the evaluation (no partial advice); an assert durable
   refuses fails it too; a sink rule on the ``h`` property of every fact message makes
   every fact handled;
6. every message has an explicit unique ``id``, and every input fact is checked to be
   present after evaluation;
7. one ruleset per ``{kb-id}@{version}``, registered once, never replaced;
8. ``pri`` is set explicitly in multiples of ten;
9. a new ruleset's first session fires a rule: durable-rules 2.0.28 frees two pointers of
   a session record it never set unless a session in that record ran an action, so
   registration fires a warm-up rule of its own (``_warm_up``) in the first session;
10. (``Evaluator.derive``) inputs both engines read alike;
11. durable's alpha network stays within its lists: the compiler refuses a knowledge
   base that could overflow its matcher's stack or its list of the patterns ending at one
   node (``CompiledKnowledgeBase.alpha_stack_bound``, ``alpha_patterns_per_node``);
12. every pattern fits durable's expression list: the compiler splits a term's tests on
   the input message over several patterns when needed (``_compiler._packs``);
13. a durable rule that stands for several terms (their tests on the input message as the
   alternatives of one ``$or``, the rest of them alike: ``CompiledKnowledgeBase.
   alternatives``) records, when it fires, each of those terms whose literals on input
   facts hold, and fails the evaluation if none holds or, for a rule of that one pattern,
   if durable fired it fewer times than alternatives hold (``_Firings``);
14. a stratum marker's message carries final values only: a term folded onto it
   (``CompiledKnowledgeBase.folded``: it reads derived facts, each derived only in earlier
   strata) is tested on the values of the facts it reads there, which the runner writes
   when it sends the marker (``RuleEngine._marker``), once everything before it has
   settled, so that no fact of an earlier stratum can come later; the runner tests the
   alternatives of such a pack on the same values.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring as _encode_str  # json.dumps' own, ensure_ascii=False
from typing import Any

import durable_rules_engine as _c

from cds._compiler import CompiledKnowledgeBase, CompiledRule
from cds._engine_result import EngineResult, FiringLog
from cds._errors import EngineError, KnowledgeBaseError, KnowledgeBaseProblem
from cds._facts import Fact
from cds._reference import holding

__all__ = ["RuleEngine"]


_LOCK = threading.Lock()
_REGISTERED: dict[str, tuple[str, int]] = {}  # ruleset name -> (canonical JSON, handle)
# Safety rule 3: a session is deleted after its evaluation, never emptied by retracting its
# facts for reuse. durable-rules 2.0.28 leaves a completed action's frame in the location
# lists of the facts it matched; retracting such a fact later walks that dead frame, and
# ``deleteMessageFromFrame`` then reads past the frame's 16 message slots, out of its pool
# into the next heap block, and zeroes two words there it takes for a match (found with
# Valgrind; it corrupted a pydantic-core validator and crashed a later garbage collection).
# Deleting a session frees its pools whole and walks no frame.
_SIDS = itertools.count(1)  # one new session per evaluation
# safety rule 9: the rule a ruleset's first session fires (``_warm_up``); no fact has the
# property it tests
_WARM_UP = "warm-up"
_WARM_UP_RULE = {"all": [{"w": {"$ex": {_WARM_UP: 1}}}], "pri": 0}
_RULE_NAME = re.compile(r"[0-9]+:[0-9]+")
_INPUT_ID = re.compile(r'"id":"f:([^"]*)"')


def _message_rule(message: str) -> tuple[int, int]:
    """The rule ``ri:ti`` an action message is for: ``{"ri:ti":{...matched facts...}}``."""
    end = message.find('"', 2)
    name = message[2:end] if message.startswith('{"') and end > 2 else ""
    if not _RULE_NAME.fullmatch(name):  # another layout: read it the long way
        name = next(iter(json.loads(message)))
        if not _RULE_NAME.fullmatch(name):
            raise EngineError(f"the engine started an action for an unknown rule {name!r}")
    ri, _, ti = name.partition(":")
    return int(ri), int(ti)


class RuleEngine:
    """Evaluates facts against one compiled knowledge base in durable-rules."""

    def __init__(self, compiled: CompiledKnowledgeBase) -> None:
        self.compiled = compiled
        self.name = compiled.name
        self._keys = compiled.durable_keys
        # per input fact in an input message: that message's index and its property's text
        self._packed = {n: (c, f',"{k}":') for n, (c, _, k) in compiled.packed_keys.items()}
        # each input message's start after the sid: id, sink and chunk properties, and
        # every group's property (tests on a fact go through its group's, ``packed_keys``)
        self._chunk_heads = [
            f'","id":"f:c{k}","h":1,"c{k}":1' + "".join(f',"{g}":1'
                                                      for g in compiled.chunk_groups(k))
            for k in range(compiled.chunks)]
        # per stratum marker whose message carries facts (``CompiledKnowledgeBase.folded``):
        # its group properties' text, and each fact's property text
        self._marker_keys = {k: ("".join(f',"{g}":1' for g in sorted(set(
            g for g, _ in keys.values()), key=lambda g: int(g[1:]))),
            {n: f',"{key}":' for n, (_, key) in keys.items()})
            for k, keys in compiled.marker_keys.items()}
        self._input_heads = _heads(self._keys, "f")
        self._derived_heads = _heads(self._keys, "d")
        definition = compiled.durable_definition() | {_WARM_UP: _WARM_UP_RULE}
        # an action message starts '{"ri:ti":': the term it is for, by that name (a rule
        # that stands for several terms is named after its first: ``_Firings``)
        self._terms = {f"{ri}:{ti}": (ri, ti) for ri, r in enumerate(compiled.rules)
                       for ti in range(len(r.terms))}
        self._packs = _packs(compiled, definition)
        # the ruleset and what its firings mean: several knowledge bases can give one
        # definition (a term's priority is not in a pattern that stands for several)
        canonical = json.dumps(definition, sort_keys=True) + repr(compiled.rules)
        with _LOCK:
            known = _REGISTERED.get(self.name)
            if known is None:
                handle = _create(self.name, definition)
                _warm_up(handle)  # safety rule 9, before any evaluation can use it
                known = _REGISTERED[self.name] = (canonical, handle)
            elif known[0] != canonical:
                raise KnowledgeBaseError(
                    [
                        KnowledgeBaseProblem(
                            "manifest.yaml", None, None,
                            f"a different knowledge base named {self.name} is already loaded "
                            "in this process; give the changed one a new version",
                        )
                    ]
                )
            self._handle = known[1]

    def evaluate(self, facts: list[Fact]) -> EngineResult:
        """Derive everything the rules derive from ``facts``.

        Only the facts some rule reads are asserted: a fact no rule reads cannot change a
        result (the reference evaluator, which sees every fact, checks this on every
        property test). Every evaluation has a new session, deleted when it ends (safety
        rule 3: facts are never retracted; why: the comment above ``_SIDS``).
        """
        with _LOCK, _session(self._handle) as sid:
            return self._derive(sid, facts, _Firings(self.compiled, self._packs, facts))

    def _derive(self, sid: str, facts: list[Fact], log: _Firings) -> EngineResult:
        """Assert the input messages (``_inputs``), then marker 0 if some term waits for
        it (one batch: durable reads a batch's messages in order, and runs no action
        until asked), then every other marker some term waits for, in order, each after
        the last has settled."""
        handle = self._handle
        chunks, separate = self._inputs(sid, facts)
        messages = chunks + _messages(sid, separate, self._input_heads)
        markers = self.compiled.markers
        rest = markers
        if markers and markers[0] == 0:
            messages.append(self._marker(sid, 0, log))
            rest = markers[1:]
        self._settle(log, sid, _c.assert_facts(handle, "[" + ",".join(messages) + "]"))
        for k in rest:
            self._settle(log, sid, _c.assert_fact(handle, self._marker(sid, k, log)))
        # durable gives the facts back as the text they were asserted in: every input
        # message must be there as it was sent. The session is new (``evaluate``) and
        # durable refuses an id twice, so the separate input facts are all there iff their
        # ids are all counted; another layout would fail every evaluation, never pass a
        # lost fact
        present = _c.get_facts(handle, sid)
        lost = [f"f:c{k}" for k, m in enumerate(chunks) if m not in present]
        if lost or present.count('"id":"f:') != len(chunks) + len(separate):
            found = set(_INPUT_ID.findall(present))
            lost += [f"f:{n}" for n, _ in separate if n not in found]
            raise EngineError("input facts lost inside the engine", sorted(lost))
        log.check_alternatives()
        return log.result()

    def _inputs(self, sid: str, facts: list[Fact]) -> tuple[list[str], list[tuple[str, Any]]]:
        """The input messages: every input fact a rule reads and none derives goes in its
        chunk's message (``CompiledKnowledgeBase.packed_keys``; each chunk's message is
        sent, empty or not, so absence tests and terms with no test have a message to
        match); a fact some rule derives, given as an input, goes alone, as derived facts
        do. Facts no rule reads are not sent (``evaluate``)."""
        packed, keys = self._packed, self._keys
        parts = [[f'{{"sid":"{sid}{head}'] for head in self._chunk_heads]
        separate: list[tuple[str, Any]] = []
        sent: list[str] = []
        for f in facts:
            name = f.name
            entry = packed.get(name)
            if entry is not None:
                sent.append(name)
                chunk, head = entry
                v = f.value
                t = type(v)  # the common types inline; the rest as _value_text writes them
                parts[chunk].append(head + ("true" if v else "false") if t is bool
                                    else head + _encode_str(v) if isinstance(v, str)
                                    else head + _value_text(name, v))
            elif name in keys:
                separate.append((name, f.value))
        if len(set(sent)) != len(sent):
            # durable would read one of the two: refuse, as it refuses a separate fact's id
            # twice
            raise EngineError("the rule engine saw a fact twice in one evaluation")
        return ["".join(p) + "}" for p in parts], separate

    def _marker(self, sid: str, k: int, log: _Firings) -> str:
        """Stratum marker ``k``'s message (``{"sid":..,"id":"s:2","stratum":2,"h":1}``);
        if folded terms wait for it (``CompiledKnowledgeBase.folded``), with every group
        property of its facts and the value of each of them there is: by now final (safety
        rule 14). The runner tests those terms on the same values (``_Firings``)."""
        head = f'{{"sid":"{sid}","id":"s:{k}","stratum":{k},"h":1'
        known = self._marker_keys.get(k)
        if known is None:
            return head + "}"
        groups, keys = known
        values = log.at_marker(k, keys)
        return head + groups + "".join(keys[n] + _value_text(n, v)
                                       for n, v in values.items()) + "}"

    def _settle(self, log: _Firings, sid: str, asserted: tuple[int, int]) -> None:
        """Run every action the last assert made ready, until none is left (what durable's
        ``Host`` does, without a JSON state round trip per action). The facts the firings
        derive are asserted in one batch when no action is left, then the actions that
        batch made ready run, until nothing new is derived: a fact only ever adds matches,
        so when it arrives changes no result."""
        handle, keys, terms, packs, fire = (self._handle, self._keys, self._terms,
                                            self._packs, log.fire)
        state = _accepted(asserted)
        while True:
            started = _c.start_action_for_state(handle, state)
            message = started[1] if started else None
            new: list[tuple[str, Any]] = []
            while message:
                try:
                    name = message[2:message.find('"', 2)]
                    pack = packs.get(name)
                    # only what some rule reads goes into the session: no other fact can
                    # fire anything (the result is the firing log's, not the session's)
                    new += [nv for nv in (log.fire_pack(name, pack) if pack
                                          else fire(*(terms.get(name)
                                                      or _message_rule(message))))
                            if nv[0] in keys]
                except BaseException:
                    _c.abandon_action(handle, state)
                    raise
                message = _c.complete_and_start_action(handle, state)
            if not new:
                return
            text = "[" + ",".join(_messages(sid, new, self._derived_heads)) + "]"
            state = _accepted(_c.assert_facts(handle, text))


class _Firings(FiringLog):
    """One evaluation's firing log, which also records the firings of the rules that stand
    for several terms (safety rule 13, ``CompiledKnowledgeBase.alternatives``).

    Such a rule's terms differ only in their tests on input facts, the alternatives of its
    ``$or`` pattern on the input message; anything else they test (derived facts, a
    marker) is in its other patterns, the same for each. (Folded terms, safety rule 14,
    have every test in the alternatives of a pattern on their marker's message.) Its first
    firing records every one of those terms whose literals on that message's facts hold
    (as the reference evaluator reads a literal: ``holding``), on the values the message
    carries (the input facts, or ``at_marker``), the later ones nothing: the rest durable
    has found to hold by firing it, and those values do not change. A firing without a
    term that holds fails the evaluation at once. A rule with no other pattern durable
    fires at least once for each alternative that holds (once per way through its alpha
    network: an ``in`` test two of whose values match makes two), so at the end
    (``check_alternatives``) such a rule fired fewer times than it has alternatives that
    hold (terms with the same tests are one alternative) fails it too: durable missed one.
    (Joined with other patterns, durable keeps one frame per set of messages, so several
    alternatives may make one firing.) A pack durable did not fire at all is not looked at
    (that would be the reference's work on every term): as for any rule, a firing durable
    misses is found by the tests that compare it with the reference, not at run time."""

    def __init__(self, compiled: CompiledKnowledgeBase, packs: dict[str, _Pack],
                 facts: list[Fact]) -> None:
        super().__init__(compiled)
        self._rules = compiled.rules
        self._packs = packs
        self._facts = facts
        self._given: dict[str, Any] | None = None  # the input facts' values, by name
        self._at_marker: dict[int, dict[str, Any]] = {}  # a marker message's values
        # durable rule name -> [alternatives held, firings]
        self._held: dict[str, list[int]] = {}

    def given(self) -> dict[str, Any]:
        if self._given is None:
            self._given = {f.name: f.value for f in self._facts}
        return self._given

    def at_marker(self, k: int, names: dict[str, str]) -> dict[str, Any]:
        """The values marker ``k``'s message carries: of the facts in ``names`` there are,
        each derived one's as derived, else as given (a fact both given and derived is
        refused after the evaluation: ``Evaluator.derive``)."""
        given, derived = self.given(), self._values
        values = {n: derived[n] if n in derived else given[n]
                  for n in names if n in derived or n in given}
        self._at_marker[k] = values
        return values

    def fire_pack(self, name: str, pack: _Pack) -> list[tuple[str, Any]]:
        known = self._held.get(name)
        if known is not None:
            known[1] += 1
            return []
        held = pack.holding(self.given() if pack.marker is None
                            else self._at_marker[pack.marker])
        if not held:
            raise EngineError("the rule engine fired one of the rules "
                              f"{pack.rule_ids(self._rules)} although none of their "
                              "conditions holds")
        # (terms of one alternative hold together: durable fires once for them)
        self._held[name] = [len({pack.alternative[term] for term in held}), 1]
        return [nv for ri, ti in held for nv in self.fire(ri, ti)]

    def check_alternatives(self) -> None:
        wrong = [self._packs[name] for name, (held, fired) in self._held.items()
                 if fired < held and self._packs[name].counted]
        if wrong:
            raise EngineError("the rule engine and the input facts disagree on which "
                              "conditions of a rule hold",
                              sorted({r for pack in wrong for r in pack.rule_ids(self._rules)}))


@dataclass(frozen=True)
class _Pack:
    """A durable rule that stands for several terms (safety rule 13)."""

    # each term (rule index, term index)
    terms: tuple[tuple[int, int], ...]
    # each term's alternative (terms with the same tests on the message are one)
    alternative: dict[tuple[int, int], int]
    # the stratum marker whose message the pack is on (None: an input message)
    marker: int | None
    # the values of the facts on the pack's message (the input facts, or the marker's)
    # -> the terms whose literals on those facts hold
    holding: Callable[[dict[str, Any]], list[tuple[int, int]]]
    # a rule of that one pattern, which durable fires at least once per alternative that
    # holds (joined with other patterns it keeps one frame per set of messages, however
    # they came: several alternatives may make one firing)
    counted: bool

    def rule_ids(self, rules: tuple[CompiledRule, ...]) -> list[str]:
        return sorted({rules[ri].rule_id for ri, _ in self.terms})


def _packs(compiled: CompiledKnowledgeBase,
           definition: dict[str, dict[str, Any]]) -> dict[str, _Pack]:
    """Per durable rule that stands for several terms: its ``_Pack``. A term's test is of
    its literals on input facts (``holding``); its other literals (on derived facts, and
    the marker it waits for) are the same for every term of the rule, in patterns of their
    own: durable has found them to hold when it fires the rule."""
    rules = compiled.rules
    packs = {}
    for name, groups in compiled.alternative_groups.items():
        terms = tuple(t for group in groups for t in group)
        patterns = definition[name]["all"]
        marker = next((int(alias[2:].partition("_")[0]) for p in patterns for alias in p
                       if alias.startswith("mk")), None)
        # the facts on the message the pack's ``$or`` is on
        on = compiled.packed_keys if marker is None else compiled.marker_keys[marker]
        packs[name] = _Pack(terms, {t: k for k, group in enumerate(groups) for t in group},
                            marker,
                            holding([(term, [lit for lit in rules[term[0]].terms[term[1]]
                                             if lit.fact in on]) for term in terms]),
                            len(patterns) == 1)
    return packs


@contextmanager
def _session(handle: int) -> Iterator[str]:
    """A new session's id (safety rule 3): the session is deleted however the block ends,
    and a bare exception from durable leaves it as an ``EngineError``."""
    sid = ""
    try:
        # made inside the try: an exception from here on (a signal handler's
        # KeyboardInterrupt included) ends in the ``finally`` that deletes it
        sid = f"s{next(_SIDS)}"
        yield sid
    except EngineError:
        raise
    except Exception as e:  # durable raises bare Exceptions; none may escape raw
        raise EngineError(f"rule engine failed: {type(e).__name__}") from e
    finally:
        if sid:
            try:
                _c.delete_state(handle, sid)
            except Exception:  # nothing was asserted: durable has no such session
                pass


def _messages(sid: str, facts: list[tuple[str, Any]], heads: dict[str, str]) -> list[str]:
    """The facts as durable-rules reads them, one message each,
    ``{"sid":"s1","id":"d:name","h":1,"g3":1,"f12":7}``: ``heads`` gives each fact's text
    after the sid up to its value (``_heads``)."""
    return [f'{{"sid":"{sid}{heads[n]}{_value_text(n, v)}}}' for n, v in facts]


def _heads(keys: dict[str, tuple[str, str]], kind: str) -> dict[str, str]:
    """Per fact: ``","id":"f:name","h":1,"g3":1,"f12":`` (``kind`` f for input facts, d
    for derived; ``h`` for the sink; the properties:
    ``CompiledKnowledgeBase.durable_keys``)."""
    return {n: '",' + f'"id":{json.dumps(f"{kind}:{n}")},"h":1,{json.dumps(g)}:1,'
               f'{json.dumps(k)}:'
            for n, (g, k) in keys.items()}


def _value_text(name: str, v: Any) -> str:
    """A fact value as durable-rules reads it. Its JSON reader takes an exponent only
    after a '.', and Python writes some floats without one (1e-05, 1e+16, 5e-324): read
    as they are, such a fact is misread or lost, or the process dies (a segmentation
    fault), so they are written 1.0e-05; a non-finite value is refused."""
    t = type(v)
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    if t is str:
        return _encode_str(v)
    if t is not float:
        return json.dumps(v, ensure_ascii=False)
    text = float.__repr__(v)
    if "e" not in text and math.isfinite(v):
        return text
    if not math.isfinite(v):
        raise EngineError(f"fact '{name}' is not a finite number ({v!r})")
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}"


def _accepted(result: tuple[int, int]) -> int:
    """The state handle of an assert durable accepted; refusals fail the evaluation."""
    code, state = result
    if code == 1:
        raise EngineError("the rule engine did not handle a fact (no rule takes it)")
    if code == 2:
        raise EngineError("the rule engine saw a fact twice in one evaluation")
    return 0 if code == 3 else state  # 3: durable's Host reads it as "state 0" too


def _warm_up(handle: int) -> None:
    """Safety rule 9: fire the warm-up rule in a ruleset's first session, then delete it.

    durable-rules 2.0.28 allocates its session records (``stateNode``) in a pool it never
    clears, and a new session's action context (two pointers) is only set when an action
    starts; deleting a session frees those pointers if they are not null. A pool slot
    that never held a session that fired therefore frees whatever bytes were in that
    memory: "free(): invalid pointer" and an abort, or a corrupted heap. Sessions here are
    one at a time (rule 2), and durable gives a deleted session's slot to the next one, so
    after this every session has a slot whose action context a firing has set and cleared.
    The rule is one no fact can match (``_WARM_UP_RULE``): it fires for every knowledge
    base, whatever its rules are."""
    with _session(handle) as sid:
        state = _accepted(_c.assert_fact(handle, f'{{"sid":"{sid}","id":"w","{_WARM_UP}":1}}'))
        started = _c.start_action_for_state(handle, state)
        if not started or not started[1].startswith(f'{{"{_WARM_UP}":'):
            raise EngineError("the rule engine did not fire its warm-up rule")
        if _c.complete_and_start_action(handle, state):
            raise EngineError("the rule engine fired more than its warm-up rule")


def _create(name: str, definition: dict[str, Any]) -> int:
    """The ruleset, created in durable's C layer from the definition's JSON text written
    as its reader reads numbers (``_json_text``). Its actions are never run by durable:
    ``_settle`` takes each from the C layer itself (no JSON state round trip)."""
    try:
        return int(_c.create_ruleset(name, _json_text(name, definition)))
    except Exception as e:  # durable raises a bare Exception with an error code
        raise EngineError(f"durable-rules refused the ruleset {name}: {e}") from e


def _json_text(name: str, v: Any) -> str:
    """``v`` as JSON with every number written as durable reads it (``_value_text``): a
    threshold such as 0.00001 (Python writes 1e-05) made durable refuse the whole ruleset
    (error 204) although the loader and the reference evaluator take it."""
    if isinstance(v, dict):
        return "{" + ",".join(f"{_encode_str(k)}:{_json_text(name, x)}"
                              for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_json_text(name, x) for x in v) + "]"
    return _value_text(name, v) if v is not None else "null"
