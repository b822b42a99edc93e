"""Everything that speaks HL7 FHIR R4: input Bundle -> facts, plan -> CarePlan Bundle,
and the project's terminology. Imports ``cds``; ``cds`` never imports this package."""

from fhir_adapters._errors import InvalidBundleError, operation_outcome
from fhir_adapters._inbound import read_bundle
from fhir_adapters._outbound import write_bundle
from fhir_adapters._terminology import code_systems, export_terminology

__all__ = [
    "InvalidBundleError",
    "code_systems",
    "export_terminology",
    "operation_outcome",
    "read_bundle",
    "write_bundle",
]
