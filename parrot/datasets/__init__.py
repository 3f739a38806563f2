"""Dataset formats the platform reads and writes: ShareGPT, MT-Bench questions, FastChat records,
and the published multi-turn benchmark files (MT-Eval, MT-Bench-101, Multi-IF, Lost in
Conversation, MultiChallenge; :mod:`parrot.datasets.published`).

Every loader takes a display ``name`` and the content (``str`` or ``bytes``), so it works on
files, uploads and object-store bytes alike; ``load_*_file(path)`` wraps it for local files.
Malformed input raises ``DatasetError`` naming the source, line and field.
"""

from parrot.datasets.jsonio import DatasetError, dumps_jsonl, iter_jsonl, iter_records
from parrot.datasets.fastchat import (
    Answer,
    QuestionId,
    SingleJudgmentRecord,
    answer_record,
    game_winner,
    load_answers,
    load_answers_file,
    load_single_judgments,
    load_single_judgments_file,
    new_answer_id,
    pairwise_judgment_record,
    single_judgment_record,
)
from parrot.datasets.mtbench import (
    Protocol,
    Question,
    attach_references,
    load_questions,
    load_questions_file,
    load_references,
    load_references_file,
)
from parrot.datasets.published import PUBLISHED_FORMATS, PUBLISHED_LOADERS
from parrot.datasets.sessions import (
    SESSION_FORMATS,
    detect_session_format,
    load_eval_sessions,
    load_eval_sessions_file,
    load_sessions,
    sessions_from_sharegpt,
)
from parrot.datasets.sharegpt import (
    Seed,
    SeedSet,
    ShareGPTRecord,
    load_seeds,
    load_seeds_file,
    load_sharegpt,
    load_sharegpt_file,
    seed_queries,
    to_sharegpt_record,
)

__all__ = [
    "PUBLISHED_FORMATS",
    "PUBLISHED_LOADERS",
    "Protocol",
    "SESSION_FORMATS",
    "Answer",
    "DatasetError",
    "Question",
    "QuestionId",
    "Seed",
    "SeedSet",
    "ShareGPTRecord",
    "SingleJudgmentRecord",
    "answer_record",
    "attach_references",
    "detect_session_format",
    "dumps_jsonl",
    "game_winner",
    "iter_jsonl",
    "iter_records",
    "load_answers",
    "load_answers_file",
    "load_eval_sessions",
    "load_eval_sessions_file",
    "load_questions",
    "load_questions_file",
    "load_references",
    "load_references_file",
    "load_seeds",
    "load_sessions",
    "load_seeds_file",
    "load_sharegpt",
    "load_sharegpt_file",
    "load_single_judgments",
    "load_single_judgments_file",
    "new_answer_id",
    "pairwise_judgment_record",
    "seed_queries",
    "sessions_from_sharegpt",
    "single_judgment_record",
    "to_sharegpt_record",
]
