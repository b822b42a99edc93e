"""Everything that speaks HL7 FHIR R4: input Bundle -> facts, plan -> CarePlan Bundle,
and the project's terminology. Imports ``cds``; ``cds`` never imports this package, and this
package imports no package above it (``movement_cds``, ``cds_service``).

Besides the reader and the writer, the public names a FHIR client of the library needs:
the strict JSON text parser (``parse_json``, ``JSONTextError``: invalid Unicode and duplicate
keys refused, with the path), the codes the reader reads (``input_codes``), whether a
CarePlan is one this project wrote (``own_careplan``: the reader and the service's
prefetch use this one test) and the project's
code systems, extension URLs and canonical base (``ALERT_SYSTEM``, ``EXERCISE_SYSTEM``,
``CHANGE_DISPLAY``, ``KNOWLEDGE_BASE_BASE``, ``EXT_EXERCISE_DOSE``, ``EXT_EXERCISE_CHANGE``,
``EXT_SOURCE_RULE``;
the CDS Hooks cards' ``CARD_SYSTEM`` and ``OVERRIDE_SYSTEM``), all defined in
``fhir_adapters._terminology``, the one module that spells out a URI; the knowledge base
as FHIR conformance resources (``export_knowledge_base``); and the seeded synthetic
populations that ``kb diff`` and ``kb profile`` evaluate (``synthetic_bundle``,
``primary_care_bundle``, ``red_flag_items``); the progress series back from an output
Bundle (``read_progress``); a FHIR Bulk Data export grouped per patient (``group_export``,
``read_bucket``, ``bucket_of``; docs/population.md) and synthetic exports
(``synth_export``, ``synth_patient``); the one builder of FHIR input that the examples,
the scenario generators, the tests and the populations use, driven by the fact catalog
(``BundleBuilder``, ``observation``, ``patient``, ``bundle``... and ``FactCatalogError``),
with the systems it names (``SCREEN_SYSTEM``, ``LOINC``, ``SNOMED``, ``UCUM``,
``STARTBACK_PANEL``)."""

from fhir_adapters._bulk import (
    BulkExportError,
    GroupedExport,
    InputFile,
    bucket_of,
    group_export,
    read_bucket,
)
from fhir_adapters._bulk_synth import SynthReport, synth_export, synth_patient
from fhir_adapters._bundle_builder import (
    BundleBuilder,
    bundle,
    coding,
    concept,
    condition,
    exercise_response,
    fact_code,
    fact_value,
    kind_of,
    observation,
    patient,
    provoked_component,
    quantity,
    questionnaire_item,
    questionnaire_response,
    red_flag_questions,
    side_component,
    value_x,
)
from fhir_adapters._bundles import (
    InputCodes,
    input_codes,
    own_careplan,
    read_bundle,
    write_bundle,
)
from fhir_adapters._code_systems import code_systems, export_terminology
from fhir_adapters._errors import (
    FactCatalogError,
    InvalidBundleError,
    OutputValidationError,
    UnclassifiedRedFlagError,
    UndocumentedRedFlagError,
    operation_outcome,
)
from fhir_adapters._json_text import JSONTextError, parse_json
from fhir_adapters._kb_export import export_knowledge_base
from fhir_adapters._population import (
    RedFlagItem,
    primary_care_bundle,
    red_flag_items,
    synthetic_bundle,
)
from fhir_adapters._progress_fhir import read_progress
from fhir_adapters._terminology import (
    ALERT_SYSTEM,
    CARD_SYSTEM,
    CHANGE_DISPLAY,
    EXERCISE_SYSTEM,
    EXT_EXERCISE_CHANGE,
    EXT_EXERCISE_DOSE,
    EXT_SOURCE_RULE,
    KNOWLEDGE_BASE_BASE,
    LOINC,
    OVERRIDE_SYSTEM,
    SCREEN_SYSTEM,
    SNOMED,
    STARTBACK_PANEL,
    UCUM,
)

__all__ = [
    "ALERT_SYSTEM",
    "CARD_SYSTEM",
    "CHANGE_DISPLAY",
    "EXERCISE_SYSTEM",
    "EXT_EXERCISE_CHANGE",
    "EXT_EXERCISE_DOSE",
    "EXT_SOURCE_RULE",
    "KNOWLEDGE_BASE_BASE",
    "LOINC",
    "OVERRIDE_SYSTEM",
    "SCREEN_SYSTEM",
    "SNOMED",
    "STARTBACK_PANEL",
    "UCUM",
    "BulkExportError",
    "BundleBuilder",
    "FactCatalogError",
    "GroupedExport",
    "InputCodes",
    "InputFile",
    "InvalidBundleError",
    "JSONTextError",
    "OutputValidationError",
    "RedFlagItem",
    "SynthReport",
    "UnclassifiedRedFlagError",
    "UndocumentedRedFlagError",
    "bucket_of",
    "bundle",
    "code_systems",
    "coding",
    "concept",
    "condition",
    "exercise_response",
    "export_knowledge_base",
    "export_terminology",
    "fact_code",
    "fact_value",
    "group_export",
    "input_codes",
    "kind_of",
    "observation",
    "operation_outcome",
    "own_careplan",
    "parse_json",
    "patient",
    "primary_care_bundle",
    "provoked_component",
    "quantity",
    "questionnaire_item",
    "questionnaire_response",
    "read_bucket",
    "read_bundle",
    "read_progress",
    "red_flag_items",
    "red_flag_questions",
    "side_component",
    "synth_export",
    "synth_patient",
    "synthetic_bundle",
    "value_x",
    "write_bundle",
]
