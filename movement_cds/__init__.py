"""movement-cds: exercise decision support for persistent low back pain.

FHIR R4 Observations in; a draft CarePlan with referrals and alerts out. Every output is a
proposal for a licensed clinician.

    >>> import movement_cds
    >>> result = movement_cds.evaluate(bundle_json, as_of="2026-11-02T09:00:00Z")
    >>> result.bundle        # the output FHIR Bundle (dict)
    >>> print(result.summary)  # the plan in plain words

What ``evaluate`` can raise (each subclasses a built-in type; the project's whole error tree,
service and tools included, is drawn in ``movement_cds._errors``)::

    MovementCDSError (Exception)
    ├── InvalidInputError (ValueError)
    │   └── InvalidBundleError      .operation_outcome: the FHIR OperationOutcome
    ├── KnowledgeBaseError (ValueError)
    └── EngineError (RuntimeError)

Progress across visits (follow-ups): ``result.plan.progress`` holds every dated pain, ODI
and adherence value the input held (``ProgressPoint``: measure, when, value, role: used,
superseded, stale or response); ``progress_chart_svg(result.plan.progress,
result.plan.time_zone)`` draws them as one self-contained SVG element (text);
``read_progress(output_bundle)`` reads the same series back from a stored output Bundle.

The patient handout (docs/handout.md): ``handout_html(evaluation_or_bundle, as_of=...)`` is
one self-contained HTML page; ``handout_pdf(html)`` prints it, or raises
``HandoutExtraMissingError`` (an ``ImportError``) without the ``handout`` extra.

For a service that loads knowledge bases itself (``cds_service``): ``run_all_scenarios(evaluator,
root)`` runs a knowledge base's scenario tests (FHIR vignettes read with the production reader)
and returns one outcome per scenario (``.passed``, ``.failures``, ``.file``, ``.line``).

A whole population (``movement-cds population run``; needs the ``population`` extra):
``run_population(source, out, as_of=..., where=Where(workers=4, dask=True))`` or
``where=Where(scheduler="tcp://host:8786")``; see docs/population.md.
"""

from cds import (
    EngineError,
    InvalidInputError,
    KnowledgeBaseError,
    MovementCDSError,
    Plan,
    ProgressPoint,
)
from fhir_adapters import InvalidBundleError, read_progress
from movement_cds._api import DecisionSupport, Evaluation, evaluate
from movement_cds._errors import HandoutExtraMissingError
from movement_cds._handout_api import handout_html, handout_pdf
from movement_cds._kbtools import run_all_scenarios
from movement_cds._population_input import PopulationInputError
from movement_cds._population_run import PopulationRunError, RunReport, run_population
from movement_cds._progress_chart import progress_chart_svg
from movement_cds._runner import RunnerError, Where
from movement_cds._version import __version__

__all__ = [
    "DecisionSupport",
    "EngineError",
    "Evaluation",
    "HandoutExtraMissingError",
    "InvalidBundleError",
    "InvalidInputError",
    "KnowledgeBaseError",
    "MovementCDSError",
    "Plan",
    "PopulationInputError",
    "PopulationRunError",
    "ProgressPoint",
    "RunReport",
    "RunnerError",
    "Where",
    "__version__",
    "evaluate",
    "handout_html",
    "handout_pdf",
    "progress_chart_svg",
    "read_progress",
    "run_all_scenarios",
    "run_population",
]
