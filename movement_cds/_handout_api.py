"""The patient handout from Python: ``handout_html`` and ``handout_pdf``.

``handout_html(source)`` takes an ``Evaluation``, or a Bundle (dict or JSON text) that is
either an output Bundle of this project (used as it is) or an input Bundle (evaluated first,
at ``as_of``, which is then required so the page is reproducible). Which one is told by its
content: an input Bundle has a Patient; an output Bundle has no Patient and a CarePlan from
one of this project's knowledge bases. Anything else is an ``InvalidBundleError`` saying so.

``handout_pdf(html)`` prints the page with WeasyPrint (the ``handout`` extra); without it,
``HandoutExtraMissingError`` (an ``ImportError``) names the extra to install.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cds import InputIssue
from fhir_adapters import InvalidBundleError, JSONTextError, parse_json, read_progress
from movement_cds._api import DecisionSupport, Evaluation, default_support
from movement_cds._errors import HandoutExtraMissingError
from movement_cds._handout import render_handout_html
from movement_cds._handout_model import is_output_bundle, read_output_bundle
from movement_cds._progress_chart import progress_chart_svg

__all__ = ["handout_html", "handout_pdf"]


def _as_dict(source: dict[str, Any] | str | bytes) -> dict[str, Any]:
    if isinstance(source, dict):
        return source
    try:
        data = parse_json(source)
    except JSONTextError as e:
        raise InvalidBundleError([InputIssue("error", "structure", str(e))]) from None
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        raise InvalidBundleError([InputIssue(
            "error", "structure", "not a FHIR Bundle: a handout needs an input Bundle (with "
            "as-of) or an output Bundle of movement-cds")])
    return data


def _output_bundle(source: Evaluation | dict[str, Any] | str | bytes,
                   as_of: datetime | str | None,
                   support: DecisionSupport | None) -> dict[str, Any]:
    if isinstance(source, Evaluation):
        return source.bundle
    bundle = _as_dict(source)
    if is_output_bundle(bundle):
        if as_of is not None:
            raise InvalidBundleError([InputIssue(
                "error", "value", "as-of applies to an input Bundle; this is an output Bundle "
                "of movement-cds (already evaluated): leave as-of out")])
        return bundle
    if not any(isinstance(e, dict) and isinstance(e.get("resource"), dict)
               and e["resource"].get("resourceType") == "Patient"
               for e in bundle.get("entry", []) or []):
        raise InvalidBundleError([InputIssue(
            "error", "structure", "neither an input Bundle (it has no Patient) nor an output "
            "Bundle of movement-cds (it has no CarePlan from a movement-cds knowledge base)",
            "Bundle.entry")])
    if as_of is None:
        raise InvalidBundleError([InputIssue(
            "error", "required", "this is an input Bundle: give the as-of instant it is "
            "evaluated at (e.g. --as-of 2026-11-02T09:00:00Z)")])
    return (support or default_support()).evaluate(bundle, as_of=as_of).bundle


def handout_html(source: Evaluation | dict[str, Any] | str | bytes, *,
                 as_of: datetime | str | None = None, support: DecisionSupport | None = None,
                 progress_chart: str | None = None) -> str:
    """The patient handout as one self-contained HTML page (see docs/handout.md).

    ``support``: the knowledge base the plan was made with (default: the bundled one), for
    the exercise texts and the pain thresholds. ``progress_chart``: an inline SVG shown on
    the page when given (the progress across visits)."""
    bundle = _output_bundle(source, as_of, support)
    kb = (support or default_support()).kb
    chart = progress_chart if progress_chart is not None else progress_chart_of(bundle)
    return render_handout_html(read_output_bundle(bundle, kb), progress_chart=chart)


def progress_chart_of(bundle: dict[str, Any]) -> str | None:
    """The progress chart (issue 17 part 2): the inline SVG of the pain, ODI and adherence
    series the output Bundle carries across visits (its progress DiagnosticReport, read back
    with ``read_progress``), or None when it carries none; for the command line, the Python
    API and the service's page alike."""
    points = read_progress(bundle)
    return progress_chart_svg(points) if points else None


def handout_pdf(html: str) -> bytes:
    """The handout page printed to PDF (A4, its print styles: a page per section)."""
    try:
        from weasyprint import HTML
    except ImportError:
        raise HandoutExtraMissingError(
            "a PDF handout needs the 'handout' extra: pip install 'movement-cds[handout]' "
            "(WeasyPrint; it also needs the system's Pango library)") from None
    except OSError as e:  # WeasyPrint installed but Pango missing
        raise HandoutExtraMissingError(
            f"WeasyPrint cannot load the system's Pango library ({e}): install Pango "
            "(Debian: libpango-1.0-0 libpangoft2-1.0-0)") from None
    pdf: bytes = HTML(string=html).write_pdf()
    return pdf
