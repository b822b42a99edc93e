"""Scores computed from the recorded items before the rules run.

These are arithmetic, not judgement: the lower side of a bilateral test, the asymmetry
between sides, a painful clearing test scoring its parent test 0, the FMS total and the
STarT Back totals from items. Keeping them here means the rules compare plain numbers.
Which score *means* what (a deficit, a pain finding, the LBP-specific scoring) is for the
rules to say.

Bilateral facts (``NAME.left``, ``NAME.right``; ``NAME`` alone is a top-level value):

- a numeric test's ``NAME`` is its final score, the *lower* of everything recorded: both
  sides and any top-level value (the input contract reads a top-level value as the final,
  lower-side score). ``NAME.asymmetry`` is ``|left - right|`` when both sides are numbers
  and a side's real score is not in doubt;
- with only one side recorded (and no top-level value) ``NAME`` is that side's value. It is
  an *upper bound* of the lower side: a rule may read ``NAME <= x`` as "the lower side is at
  most x", but ``NAME >= x`` does not show that both sides reach x (a "good enough" gate
  must also ask for both sides, ``NAME.left`` and ``NAME.right``). No asymmetry then;
- a boolean test (a clearing test, true = painful) is true when either side is true, false
  only when both sides (or the top-level value) say false; it has no asymmetry.

Clearing tests (true = painful) score their parent 0:

- a sided clearing test (``clear-shoulder.left``) scores that side of the parent 0, and so
  the parent's final score;
- the same test sent without a side scores the parent's final score 0; which side hurt is
  unknown, so no asymmetry is derived for the parent (never a made-up "symmetric");
- a whole-test clearing test (spinal extension, spinal flexion) scores the parent 0: the
  final score and each recorded side.

The FMS total is the sum of the seven final scores, computed only when each of them is
known (both sides, a top-level value, a painful clearing test, or one side at 0, the
floor); a sum over an upper bound would overstate it. STarT Back totals are computed only
from all nine items.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cds._facts import Fact, Scalar

__all__ = ["CLEARING", "FMS_TESTS", "derive_scores"]

# clearing test -> the FMS test it scores 0 when painful
CLEARING = {
    "clear-shoulder": "fms-shoulder-mobility",
    "clear-spinal-extension": "fms-trunk-stability-pushup",
    "clear-spinal-flexion": "fms-rotary-stability",
}
FMS_TESTS = (
    "fms-deep-squat", "fms-hurdle-step", "fms-inline-lunge", "fms-shoulder-mobility",
    "fms-active-slr", "fms-trunk-stability-pushup", "fms-rotary-stability",
)
SIDES = (".left", ".right")


def _src(*facts: Fact | None) -> tuple[str, ...]:
    return tuple(sorted({s for f in facts if f is not None for s in f.sources}))


def _number(f: Fact | None) -> bool:
    return f is not None and isinstance(f.value, int | float) and not isinstance(f.value, bool)


def _num(f: Fact) -> int | float:
    v = f.value
    assert isinstance(v, int | float) and not isinstance(v, bool)
    return v


@dataclass
class _Scoring:
    """The facts as sent plus what is computed from them; ``derive_scores`` runs the steps
    (the methods below) in order, each reading what the earlier ones put."""

    by: dict[str, Fact]
    bilateral: set[str]
    # tests whose final score is known although a side is missing or in doubt (clearing)
    final_known: set[str] = field(default_factory=set)
    # tests whose per-side scores no longer show the real asymmetry
    no_asymmetry: set[str] = field(default_factory=set)
    # the clearing facts that zeroed each parent's final score
    zeroed_by: dict[str, list[Fact]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sent = set(self.by)

    def put(self, name: str, value: Scalar, *src: Fact | None) -> None:
        prelim = any(f.preliminary for f in src if f is not None)
        self.by[name] = Fact(name, value, _src(*src), prelim)

    def clearing(self) -> None:
        """1. Clearing tests: a painful one scores its parent 0."""
        for clear, parent in CLEARING.items():
            for side in ("", *SIDES):
                c = self.by.get(clear + side)
                if c is not None and c.value is True:
                    self._cleared(c, clear, parent, side)

    def _cleared(self, c: Fact, clear: str, parent: str, side: str) -> None:
        parent_sided = parent in self.bilateral
        if side and parent_sided:
            # that side only
            self.put(parent + side, 0, c, self.by.get(parent + side))
        elif not side and clear in self.bilateral and parent_sided:
            # painful, side not given: the final score is 0; which side is unknown
            self.no_asymmetry.add(parent)
        elif parent_sided:
            # a whole-test clearing test: the final score and every recorded side
            for s in SIDES:
                if parent + s in self.by:
                    self.put(parent + s, 0, c, self.by[parent + s])
        self.zeroed_by.setdefault(parent, []).append(c)
        self.final_known.add(parent)

    def sides(self) -> None:
        """2. Bilateral facts: the final (lower-side) score and the asymmetry."""
        for name in sorted(self.bilateral):
            left, right = self.by.get(name + ".left"), self.by.get(name + ".right")
            top = self.by.get(name)
            sides = [f for f in (left, right) if f is not None]
            if not sides:
                continue
            if all(isinstance(f.value, bool) for f in sides) and (
                top is None or isinstance(top.value, bool)
            ):
                self._either_side(name, sides, top)
            elif all(_number(f) for f in sides) and (top is None or _number(top)):
                self._lower_side(name, left, right, top)
            # else mixed types: nothing sensible to compute

    def _either_side(self, name: str, sides: list[Fact], top: Fact | None) -> None:
        """A boolean test (true = painful / positive): either side true makes it true."""
        if any(f.value is True for f in sides):
            self.put(name, True, *[f for f in sides if f.value is True])
        elif top is None and len(sides) == 2:
            self.put(name, False, *sides)

    def _lower_side(self, name: str, left: Fact | None, right: Fact | None,
                    top: Fact | None) -> None:
        sides = [f for f in (left, right) if f is not None]
        values = [_num(f) for f in sides] + ([_num(top)] if top is not None else [])
        lowest = min(values)
        self.put(name, lowest, *sides, top)
        if left is not None and right is not None and name not in self.no_asymmetry:
            self.put(name + ".asymmetry", abs(_num(left) - _num(right)), left, right)
        if len(sides) == 2 or top is not None or lowest == 0:
            self.final_known.add(name)  # 0 is the floor: one side at 0 settles the lower side

    def painful_clearing(self) -> None:
        """3. A painful clearing test: the final score is 0 whatever the sides say."""
        for parent, clears in self.zeroed_by.items():
            self.put(parent, 0, *clears, self.by.get(parent), self.by.get(parent + ".left"),
                     self.by.get(parent + ".right"))

    def fms_total(self) -> None:
        """4. The FMS total from the seven final scores, when each is known and it was not
        sent."""
        if "fms-total" not in self.by and all(self._known_final(t) for t in FMS_TESTS):
            parts = [self.by[t] for t in FMS_TESTS]
            self.put("fms-total", sum(int(p.value) for p in parts), *parts)

    def _known_final(self, t: str) -> bool:
        if not _number(self.by.get(t)):
            return False
        if t not in self.bilateral:
            return True
        return t in self.sent or t in self.final_known

    def startback_totals(self) -> None:
        """5. STarT Back totals from all nine items, when not sent."""
        items = [self.by.get(f"startback-item-{i}") for i in range(1, 10)]
        if not all(i is not None for i in items):
            return
        if "startback-total" not in self.by:
            self.put("startback-total", sum(1 for i in items if i and i.value is True), *items)
        if "startback-psychosocial" not in self.by:
            sub = items[4:]
            self.put("startback-psychosocial", sum(1 for i in sub if i and i.value is True),
                     *sub)


def derive_scores(facts: list[Fact], bilateral: set[str]) -> list[Fact]:
    """The facts with the scores computed from them (final bilateral scores, asymmetries,
    clearing-test zeros, the FMS and STarT Back totals); what was sent is never replaced
    by a total."""
    s = _Scoring({f.name: f for f in facts}, bilateral)
    s.clearing()
    s.sides()
    s.painful_clearing()
    s.fms_total()
    s.startback_totals()
    return sorted(s.by.values(), key=lambda f: f.name)
