"""A service worker's loaded heap is frozen, so full collections no longer walk it."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from cds_service._heap import settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _garbage_cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_settle_collects_then_freezes_and_raises_the_young_threshold(restored_gc: None) -> None:
    gc.disable()  # no collection but settle_heap's own
    try:
        cycle = _garbage_cycle()
        assert cycle() is not None
        settle_heap()
        assert cycle() is None  # garbage is collected before the freeze, not frozen with it
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold()[0] == 20_000
        # a reload: what was frozen with the old engine and is garbage now is collected
        holder = [_Node()]
        holder[0].other = holder[0]
        old = weakref.ref(holder[0])
        settle_heap()  # holder is frozen with the rest
        holder.clear()  # the "old engine" is dropped: a frozen cycle, never collected...
        gc.collect()
        assert old() is not None
        settle_heap()  # ...until the next settle unfreezes first
        assert old() is None
    finally:
        gc.enable()


def test_garbage_made_after_settling_is_still_collected(restored_gc: None) -> None:
    settle_heap()
    cycle = _garbage_cycle()
    gc.collect()
    assert cycle() is None
