"""Every URI the project writes or reads, in one place: its own code systems, extension
URLs and canonical bases, and the external code systems (LOINC, SNOMED CT, UCUM, HL7) it
names. A leaf module: it imports nothing of the project, so the reader, the writer, the
knowledge-base export and the service all take their URIs from here and none from another.

What each code system holds is published by ``fhir_adapters._code_systems`` (the
CodeSystem resources) and described in docs/integrators/output.md; the input contract
(docs/integrators/input.md) says which codes the reader reads in which system.
tests/test_terminology.py fails when a URI literal is typed again outside this module.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACTIVITY_DEFINITION_BASE",
    "ADHERENCE_CODE",
    "ALERT_SYSTEM",
    "CANONICAL_BASE",
    "CARD_SYSTEM",
    "CHANGE_DISPLAY",
    "CHECK_IN_CODE",
    "CLINICAL_STATUS",
    "CONDITION_CATEGORY",
    "DATA_OPERATION",
    "EXAMPLE_MRN",
    "EXERCISE_SYSTEM",
    "EXT_EVIDENCE",
    "EXT_EXERCISE_CHANGE",
    "EXT_EXERCISE_DOSE",
    "EXT_FOLLOW_UP_STATE",
    "EXT_PROGRESS_ROLE",
    "EXT_RULE_OUTPUT",
    "EXT_RULE_PRIORITY",
    "EXT_SOURCE_RULE",
    "KNOWLEDGE_BASE_BASE",
    "LIBRARY_TYPE",
    "LOINC",
    "OBSERVATION_CATEGORY",
    "OVERRIDE_SYSTEM",
    "PLAN_CHANGE_SYSTEM",
    "PLAN_DEFINITION_BASE",
    "PLAN_DEFINITION_TYPE",
    "PROGRESS_CODE",
    "PROVENANCE_PARTICIPANT_TYPE",
    "QUESTIONNAIRE_BASE",
    "SCREEN_SYSTEM",
    "SNOMED",
    "STARTBACK_PANEL",
    "STRUCTURE_DEFINITION_BASE",
    "TIMEZONE_EXTENSIONS",
    "UCUM",
    "VERIFICATION_STATUS",
]

# --- the project's own (canonical base http://movement-cds.org/fhir) ------------------------

#: The canonical base of everything the project publishes; also the name of the UUID
#: namespace the output resource ids are made in (uuid5).
CANONICAL_BASE: Final = "http://movement-cds.org/fhir"
#: Questions, tests and answer codes of the screen (the input contract's own codes).
SCREEN_SYSTEM: Final = "http://movement-cds.org/fhir/CodeSystem/screen"
#: The exercise catalog (CarePlan activity codes).
EXERCISE_SYSTEM: Final = "http://movement-cds.org/fhir/CodeSystem/exercise"
#: Alerts (DetectedIssue.code, ServiceRequest.reasonCode).
ALERT_SYSTEM: Final = "http://movement-cds.org/fhir/CodeSystem/alert"
#: What a revised plan did to an exercise, the check-in and the progress report's codes.
PLAN_CHANGE_SYSTEM: Final = "http://movement-cds.org/fhir/CodeSystem/plan-change"
#: CDS Hooks: the source of the service's cards, and the reasons a clinician overrides one.
CARD_SYSTEM: Final = "http://movement-cds.org/fhir/CodeSystem/card"
OVERRIDE_SYSTEM: Final = "http://movement-cds.org/fhir/CodeSystem/override-reason"
#: ``{KNOWLEDGE_BASE_BASE}/{kb-id}|{version}`` (CarePlan.instantiatesUri); also the
#: identifier system of the knowledge base in the Provenance.
KNOWLEDGE_BASE_BASE: Final = "http://movement-cds.org/fhir/KnowledgeBase"
#: Canonical bases of the conformance resources ``kb export-fhir`` publishes.
PLAN_DEFINITION_BASE: Final = "http://movement-cds.org/fhir/PlanDefinition"
ACTIVITY_DEFINITION_BASE: Final = "http://movement-cds.org/fhir/ActivityDefinition"
#: A QuestionnaireResponse names one of these in ``questionnaire`` (red-flag screen,
#: STarT Back).
QUESTIONNAIRE_BASE: Final = "http://movement-cds.org/fhir/Questionnaire"

# extensions (StructureDefinition URLs)
STRUCTURE_DEFINITION_BASE: Final = "http://movement-cds.org/fhir/StructureDefinition/"
EXT_EXERCISE_DOSE: Final = STRUCTURE_DEFINITION_BASE + "exercise-dose"
EXT_SOURCE_RULE: Final = STRUCTURE_DEFINITION_BASE + "source-rule"
EXT_EVIDENCE: Final = STRUCTURE_DEFINITION_BASE + "evidence"
EXT_FOLLOW_UP_STATE: Final = STRUCTURE_DEFINITION_BASE + "exercise-follow-up"
EXT_EXERCISE_CHANGE: Final = STRUCTURE_DEFINITION_BASE + "exercise-change"
EXT_RULE_OUTPUT: Final = STRUCTURE_DEFINITION_BASE + "rule-output"
EXT_RULE_PRIORITY: Final = STRUCTURE_DEFINITION_BASE + "rule-priority"
# on each value of the progress series: used | superseded | stale | response (valueCode)
EXT_PROGRESS_ROLE: Final = STRUCTURE_DEFINITION_BASE + "progress-role"

# --- external code systems and extensions -----------------------------------------------------

LOINC: Final = "http://loinc.org"
SNOMED: Final = "http://snomed.info/sct"
UCUM: Final = "http://unitsofmeasure.org"
CLINICAL_STATUS: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION_STATUS: Final = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
#: Observation (survey/exam) and Condition (problem-list-item) categories: the generated
#: example input writes them; the reader does not need them.
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/condition-category"
PLAN_DEFINITION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/plan-definition-type"
LIBRARY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/library-type"
DATA_OPERATION: Final = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_PARTICIPANT_TYPE: Final = (
    "http://terminology.hl7.org/CodeSystem/provenance-participant-type")
#: The identifier system of the made-up medical record numbers in the examples and vignettes.
EXAMPLE_MRN: Final = "https://example.org/fhir/mrn"
#: The patient's IANA time zone on Patient (valueCode): the Extensions Pack's and the
#: R4-era core extension's URLs, both read.
TIMEZONE_EXTENSIONS: Final = frozenset({
    "http://hl7.org/fhir/StructureDefinition/timezone",
    "http://hl7.org/fhir/StructureDefinition/tz-code",
})

# --- codes ----------------------------------------------------------------------------------

#: LOINC's STarT Back Screening Tool panel: the code of the STarT Back Questionnaire.
STARTBACK_PANEL: Final = {"system": LOINC, "code": "91349-1",
                          "display": "STarT Back Screening Tool panel"}

# the plan-change CodeSystem: change kind -> (display, definition); and the check-in code
CHANGE_DISPLAY: Final[dict[str, tuple[str, str]]] = {
    "new": ("New", "Not in the previous plan."),
    "continued": ("Continued", "The same exercise at the same dose (also when no response "
                  "was recorded: a missing response is never read as 'fine')."),
    "progressed": ("Progressed", "One variable of the dose up (load, repetitions, sets, "
                   "hold, tempo), or the harder version of the exercise."),
    "held": ("Held", "The same dose again: the response was acceptable but not yet ready "
             "to progress."),
    "regressed": ("Regressed", "Less load, range or complexity, or the easier version of "
                  "the exercise."),
    "swapped": ("Swapped", "Replaced by an exercise with the same goal in another "
                "direction or plane."),
    "stopped": ("Stopped", "Taken out of the plan (peripheralisation, new neurological "
                "symptoms, a red flag or a precaution)."),
}
CHECK_IN_CODE: Final = ("check-in", "Check-in after a new or changed exercise",
                        "A proposed contact with the patient 48-72 hours (configurable) "
                        "after a new or changed exercise (CarePlan activity).")

# --- progress across visits (output contract: docs/integrators/output.md, "Progress") ------
# the DiagnosticReport that carries the series, and the code of its adherence values, in the
# plan-change CodeSystem: (code, display, definition)
PROGRESS_CODE: Final = (
    "progress", "Progress across visits",
    "Pain now, Oswestry Disability Index and exercise adherence at each visit the input "
    "held, with which value the decision read (DiagnosticReport.code of the output).")
ADHERENCE_CODE: Final = (
    "adherence", "Exercise sessions done (% of prescribed)",
    "Sessions done as a percentage of sessions prescribed, summed over the exercises whose "
    "follow-up responses of that day gave both (valueQuantity, %).")
