"""The public API is small and explicit; changing it is a decision, so it is pinned here."""

from __future__ import annotations

import cds
import fhir_adapters
import movement_cds


def test_movement_cds_exports() -> None:
    assert sorted(movement_cds.__all__) == [
        "DecisionSupport",
        "EngineError",
        "Evaluation",
        "InvalidBundleError",
        "InvalidInputError",
        "KnowledgeBaseError",
        "MovementCDSError",
        "Plan",
        # population run (issue 16)
        "PopulationInputError",
        "PopulationRunError",
        "RunReport",
        "RunnerError",
        "Where",
        "__version__",
        "evaluate",
        # the service's scenario check at start and on reload (issue 13 part 1)
        "run_all_scenarios",
        "run_population",
    ]


def test_fhir_adapters_exports() -> None:
    assert sorted(fhir_adapters.__all__) == sorted([
        "InvalidBundleError",
        "code_systems",
        "export_terminology",
        "operation_outcome",
        "read_bundle",
        "write_bundle",
        # what the CDS Hooks service (cds_service) needs, public since issue 13 part 1:
        # the strict JSON text parser, the codes the reader reads, the project's systems
        "JSONTextError", "parse_json", "InputCodes", "input_codes",
        "ALERT_SYSTEM", "CHANGE_DISPLAY", "EXERCISE_SYSTEM", "KNOWLEDGE_BASE_BASE",
    ])


def test_cds_exports() -> None:
    assert sorted(cds.__all__) == sorted([
        "AvoidedExercise", "CompiledKnowledgeBase", "DataGap", "Derivation", "DerivedFact",
        "EngineError", "EngineResult", "Evaluator", "EvidenceRef", "ExerciseDose", "Fact",
        "InputIssue", "InvalidInputError", "KnowledgeBase", "KnowledgeBaseError",
        "KnowledgeBaseProblem", "MovementCDSError", "PatientFacts", "Plan", "PlanAlert",
        "PlannedExercise", "Referral", "compile_knowledge_base", "evaluate_reference",
        "load_knowledge_base",
        # follow-up (issue 6)
        "CheckIn", "ExerciseChange", "ExerciseResponse", "FollowUp", "PreviousExercise",
        "PreviousPlan",
        # how answers were read (issue 12: red-flag answers are safety data)
        "AnswerNote",
        # knowledge-base helpers the CDS Hooks service uses (issue 13 part 1)
        "check_changelog", "evidence_url",
    ])


def test_cds_service_exports_nothing() -> None:
    """The service is an application, not a library: its API is HTTP and the command line."""
    import cds_service

    assert cds_service.__all__ == []


def test_every_export_exists_and_errors_subclass_builtins() -> None:
    for mod in (cds, fhir_adapters, movement_cds):
        for name in mod.__all__:
            assert hasattr(mod, name), f"{mod.__name__}.{name}"
    assert issubclass(movement_cds.InvalidBundleError, ValueError)
    assert issubclass(movement_cds.KnowledgeBaseError, ValueError)
    assert issubclass(movement_cds.EngineError, RuntimeError)
    assert issubclass(movement_cds.InvalidBundleError, movement_cds.MovementCDSError)


def test_cds_knows_nothing_of_fhir_or_http() -> None:
    import ast
    from pathlib import Path

    root = Path(cds.__file__).parent
    banned = ("fhir_adapters", "fhir", "fastapi", "httpx", "uvicorn", "starlette")
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in banned, f"{path.name} imports {n}"
