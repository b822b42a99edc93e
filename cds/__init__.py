"""The decision core of movement-cds: knowledge base, rule engine, plan.

It knows nothing of FHIR or HTTP; ``fhir_adapters`` turns FHIR into ``PatientFacts`` and a
``Plan`` back into FHIR.
"""

from cds._compiler import CompiledKnowledgeBase, compile_knowledge_base
from cds._engine_result import EngineResult
from cds._errors import (
    EngineError,
    InputIssue,
    InvalidInputError,
    KnowledgeBaseError,
    KnowledgeBaseProblem,
    MovementCDSError,
)
from cds._evaluator import Evaluator
from cds._facts import AnswerNote, Derivation, DerivedFact, Fact, PatientFacts
from cds._followup import (
    CheckIn,
    ExerciseChange,
    ExerciseResponse,
    FollowUp,
    PreviousExercise,
    PreviousPlan,
)
from cds._knowledge_base import KnowledgeBase, load_knowledge_base
from cds._plan import (
    AvoidedExercise,
    DataGap,
    EvidenceRef,
    ExerciseDose,
    Plan,
    PlanAlert,
    PlannedExercise,
    Referral,
)
from cds._reference import evaluate_reference

__all__ = [
    "AnswerNote",
    "AvoidedExercise",
    "CheckIn",
    "CompiledKnowledgeBase",
    "DataGap",
    "Derivation",
    "DerivedFact",
    "EngineError",
    "EngineResult",
    "Evaluator",
    "EvidenceRef",
    "ExerciseChange",
    "ExerciseDose",
    "ExerciseResponse",
    "Fact",
    "FollowUp",
    "InputIssue",
    "InvalidInputError",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "KnowledgeBaseProblem",
    "MovementCDSError",
    "PatientFacts",
    "Plan",
    "PlanAlert",
    "PlannedExercise",
    "PreviousExercise",
    "PreviousPlan",
    "Referral",
    "compile_knowledge_base",
    "evaluate_reference",
    "load_knowledge_base",
]
