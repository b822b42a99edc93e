"""Everything that speaks HL7 FHIR R4: input Bundle -> facts, plan -> CarePlan Bundle,
and the project's terminology. Imports ``cds``; ``cds`` never imports this package, and this
package imports no package above it (``movement_cds``, ``cds_service``).

Besides the reader and the writer, the public names a FHIR client of the library needs:
the strict JSON text parser (``parse_json``, ``JSONTextError``: invalid Unicode and duplicate
keys refused, with the path), the codes the reader reads (``input_codes``) and the project's
code systems and canonical base (``ALERT_SYSTEM``, ``EXERCISE_SYSTEM``, ``CHANGE_DISPLAY``,
``KNOWLEDGE_BASE_BASE``); the knowledge base as FHIR conformance resources
(``export_knowledge_base``); and the seeded synthetic populations that ``kb diff`` and
``kb profile`` evaluate (``synthetic_bundle``, ``primary_care_bundle``, ``red_flag_items``)."""

from fhir_adapters._errors import (
    InvalidBundleError,
    OutputValidationError,
    UnclassifiedRedFlagError,
    UndocumentedRedFlagError,
    operation_outcome,
)
from fhir_adapters._inbound import InputCodes, input_codes, read_bundle
from fhir_adapters._json_text import JSONTextError, parse_json
from fhir_adapters._kb_export import export_knowledge_base
from fhir_adapters._outbound import (
    ALERT_SYSTEM,
    CHANGE_DISPLAY,
    EXERCISE_SYSTEM,
    KNOWLEDGE_BASE_BASE,
    write_bundle,
)
from fhir_adapters._population import (
    RedFlagItem,
    primary_care_bundle,
    red_flag_items,
    synthetic_bundle,
)
from fhir_adapters._terminology import code_systems, export_terminology

__all__ = [
    "ALERT_SYSTEM",
    "CHANGE_DISPLAY",
    "EXERCISE_SYSTEM",
    "KNOWLEDGE_BASE_BASE",
    "InputCodes",
    "InvalidBundleError",
    "JSONTextError",
    "OutputValidationError",
    "RedFlagItem",
    "UnclassifiedRedFlagError",
    "UndocumentedRedFlagError",
    "code_systems",
    "export_knowledge_base",
    "export_terminology",
    "input_codes",
    "operation_outcome",
    "parse_json",
    "primary_care_bundle",
    "read_bundle",
    "red_flag_items",
    "synthetic_bundle",
    "write_bundle",
]
