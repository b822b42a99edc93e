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
        # the patient handout (issue 17 part 1)
        "HandoutExtraMissingError",
        "InvalidBundleError",
        "InvalidInputError",
        "KnowledgeBaseError",
        "MovementCDSError",
        "Plan",
        # population run (issue 16)
        "PopulationInputError",
        "PopulationRunError",
        # progress across visits, and its chart for the handout (issue 17 part 2)
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
        "own_careplan", "read_bundle",
        "write_bundle",
        # what the CDS Hooks service (cds_service) needs, public since issue 13 part 1:
        # the strict JSON text parser, the codes the reader reads, the project's systems
        "JSONTextError", "parse_json", "InputCodes", "input_codes",
        "ALERT_SYSTEM", "CHANGE_DISPLAY", "EXERCISE_SYSTEM", "KNOWLEDGE_BASE_BASE",
        # the extension URLs the handout reads and the cards' systems, which movement_cds
        # and cds_service re-typed before issue 14 part 3 (one terminology module)
        "EXT_EXERCISE_DOSE", "EXT_EXERCISE_CHANGE", "CARD_SYSTEM", "OVERRIDE_SYSTEM",
        "EXT_SOURCE_RULE",
        # the progress series back from an output Bundle (issue 17 part 2)
        "read_progress",
        # what the command line reached through private modules before issue 14 part 2: the
        # FHIR export of a release and the synthetic populations of kb diff / kb profile
        "export_knowledge_base", "OutputValidationError", "synthetic_bundle",
        "primary_care_bundle", "red_flag_items", "RedFlagItem", "UndocumentedRedFlagError",
        "UnclassifiedRedFlagError",
        # population runs (issue 16 part 1): a Bulk Data export grouped per patient
        "BulkExportError", "GroupedExport", "InputFile", "bucket_of", "group_export",
        "read_bucket",
        # and its synthetic exports (issue 16 part 6)
        "SynthReport", "synth_export", "synth_patient",
        # the one builder of FHIR input (issue 14 part 4): examples, scenario generators,
        # tests and populations build with it, from the knowledge base's fact catalog
        "BundleBuilder", "FactCatalogError", "bundle", "coding", "concept", "condition",
        "exercise_response", "fact_code", "fact_value", "kind_of", "observation", "patient",
        "provoked_component", "quantity", "questionnaire_item", "questionnaire_response",
        "red_flag_questions", "side_component", "value_x",
        "LOINC", "SCREEN_SYSTEM", "SNOMED", "STARTBACK_PANEL", "UCUM",
    ])


def test_cds_exports() -> None:
    assert sorted(cds.__all__) == sorted([
        "AvoidedExercise", "CompiledKnowledgeBase", "DataGap", "Derivation", "DerivedFact",
        "EngineError", "EngineResult", "Evaluator", "ExplainTargetError", "EvidenceRef",
        "ExerciseDose", "Fact",
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
        # progress across visits, shown with human dates (issue 17 parts 2 and 3)
        "MEASURES", "Measure", "MeasureInfo", "PROGRESS_FACTS", "ProgressPoint",
        "ProgressRole", "adherence_points", "human_date", "human_instant",
        "progress_by_measure", "show_number", "trend_text",
        # the exercise drawings, for the handout and the catalog (issue 17)
        "exercise_figure_svg",
        # issue 14 part 2: what kb diff needs of the core, public instead of reached privately
        "Rating", "resolve_plan", "alert_holds_exercise",
        # issue 14 part 5: the release's files, for the cache key and the release archive
        "knowledge_base_files",
    ])


def test_authoring_exports() -> None:
    """The knowledge-base toolchain (issue 14 part 2): what ``movement-cds kb ...`` is built
    from, public in ``cds.authoring`` instead of reached through private modules."""
    import cds.authoring

    assert sorted(cds.authoring.__all__) == sorted([
        # the file model
        "Action", "AllOf", "AnyOf", "AtLeast", "Condition", "DoseSpec", "Evidence",
        "ExerciseDefinition", "FactDefinition", "FactTest", "NoneOf", "Param", "ParamTest",
        "Rule", "SynonymGroup", "evidence_url",
        # checks
        "lint_knowledge_base", "plain_problems", "CHANGELOG_FILE", "check_changelog",
        "parse_changelog",
        # tests: scenarios and trajectories
        "DEFAULT_AS_OF", "BundleReader", "CaseOutcome", "ExpectationRow", "Scenario",
        "ScenarioOutcome", "load_scenarios", "run_scenarios", "scenario_case",
        "TrajectoryOutcome", "load_trajectories", "run_trajectories",
        # explanations
        "Explainer", "ExplainTargetError", "render_item", "render_plan_explanation",
        "render_target",
        # documents
        "render_catalog", "render_catalog_html", "ExercisePicture", "write_catalog", "schemas",
    ])


def test_cds_service_exports_nothing() -> None:
    """The service is an application, not a library: its API is HTTP and the command line."""
    import cds_service

    assert cds_service.__all__ == []


def test_every_export_exists_and_errors_subclass_builtins() -> None:
    import cds.authoring

    for mod in (cds, cds.authoring, fhir_adapters, movement_cds):
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
