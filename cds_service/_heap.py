"""The long-lived heap of a service worker, moved out of the garbage collector's sight.

A loaded worker holds a large, permanent object graph (the knowledge base, its compiled
rules, the FHIR models). CPython's full collections walk all of it: measured at about 65 ms
per full collection on the bundled knowledge base, every couple of hundred requests, which
stalls every request in flight on that worker. ``gc.freeze()`` after the engine is loaded
keeps those objects out of every later collection; garbage made by requests is collected
as usual. A request allocates some 10^5 objects, most gone when it ends: a larger first
generation threshold (20,000, not 700) lets them die before a collection walks them.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("movement_cds.service")

_YOUNG = 20_000


def settle_heap() -> None:
    """Collect what loading left behind, then freeze the rest (a service worker only)."""
    if gc.get_freeze_count():
        gc.unfreeze()  # a reload: what the old engine held can be collected now
    gc.collect()
    gc.freeze()
    gc.set_threshold(_YOUNG, *gc.get_threshold()[1:])
    log.info("heap settled: %d objects frozen, out of every later full collection",
             gc.get_freeze_count())
