"""Scores computed from the recorded items before the rules run.

These are arithmetic, not judgement: the lower side of a bilateral test, the asymmetry
between sides, a painful clearing test scoring its parent test 0, STarT Back totals from
items. Keeping them here means the rules compare plain numbers.
"""

from __future__ import annotations

from cds._facts import Fact, Scalar

__all__ = ["derive_scores"]

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


def _src(*facts: Fact | None) -> tuple[str, ...]:
    return tuple(sorted({s for f in facts if f is not None for s in f.sources}))


def derive_scores(facts: list[Fact], bilateral: set[str]) -> list[Fact]:
    by = {f.name: f for f in facts}

    def put(name: str, value: Scalar, *src: Fact | None) -> None:
        prelim = any(f.preliminary for f in src if f is not None)
        by[name] = Fact(name, value, _src(*src), prelim)

    # clearing tests: a painful one scores its parent 0 (per side when the clearing is sided)
    for clear, parent in CLEARING.items():
        for side in ("", ".left", ".right"):
            c = by.get(clear + side)
            if c is not None and c.value is True:
                if side and parent in bilateral:
                    put(parent + side, 0, c, by.get(parent + side))
                elif not side:
                    if parent in bilateral:
                        for s in (".left", ".right"):
                            if parent + s in by:
                                put(parent + s, 0, c, by[parent + s])
                    put(parent, 0, c, by.get(parent))
    # bilateral: lower side is the score; asymmetry is the difference
    for name in sorted(bilateral):
        left, right = by.get(name + ".left"), by.get(name + ".right")
        if left is not None and right is not None:
            lv, rv = left.value, right.value
            if isinstance(lv, int | float) and isinstance(rv, int | float):
                put(name, min(lv, rv), left, right, by.get(name))
                put(name + ".asymmetry", abs(lv - rv), left, right)
        elif (left or right) is not None and name not in by:
            one = left or right
            assert one is not None
            put(name, one.value, one)
    # FMS total from the seven tests when not sent
    if "fms-total" not in by and all(t in by for t in FMS_TESTS):
        parts = [by[t] for t in FMS_TESTS]
        put("fms-total", sum(int(p.value) for p in parts), *parts)
    # STarT Back totals from items when not sent
    items = [by.get(f"startback-item-{i}") for i in range(1, 10)]
    if all(i is not None for i in items):
        if "startback-total" not in by:
            put("startback-total", sum(1 for i in items if i and i.value is True), *items)
        if "startback-psychosocial" not in by:
            sub = items[4:]
            put("startback-psychosocial", sum(1 for i in sub if i and i.value is True), *sub)
    return sorted(by.values(), key=lambda f: f.name)

