"""Extended drafts in the record shapes of the published benchmarks, so a drafted MT-Bench++ can
be fed to any tool that reads MT-Eval or MT-Bench-101 files (and back to ``parrot eval`` with
``--history golden``).

The assistant turns are the context answers the responder wrote while the draft was extended
(``extension.context_answers``: one per turn before the last); the last turn has no drafted answer
and gets an empty one. Sessions left unchanged (already long enough) have no context answers: every
assistant turn is empty. Shapes (see :mod:`parrot.datasets.published`):

* ``mt-eval``: ``{"question_id", "category", "conversation": [{"id": "<qid>_<i>", "user", "sys"}]}``
* ``mtbench101``: ``{"task", "id", "history": [{"user", "bot"}]}``; ``task`` is one of the 13 task
  codes (default ``AR``, anaphora resolution: what the asker's follow-ups test), ``id`` the
  question id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from parrot.datasets.published import MTBENCH101_TASKS

SHAPES = ("mt-eval", "mtbench101")


def as_shape(record: dict[str, Any], shape: str, task: str = "AR") -> dict[str, Any]:
    """One extended record (MT-Bench format with ``extension``) in a published shape."""
    if shape not in SHAPES:
        raise ValueError(f"shape is {shape!r}; allowed: {', '.join(SHAPES)}")
    if task not in MTBENCH101_TASKS:
        raise ValueError(f"task is {task!r}; allowed: {', '.join(MTBENCH101_TASKS)}")
    turns: list[str] = list(record["turns"])
    answers = list((record.get("extension") or {}).get("context_answers") or [])
    bots = [answers[i] if i < len(answers) else "" for i in range(len(turns))]
    qid = record["question_id"]
    if shape == "mt-eval":
        return {"question_id": qid, "category": record.get("category", "general"),
                "conversation": [{"id": f"{qid}_{i}", "user": u, "sys": b} for i, (u, b) in enumerate(zip(turns, bots))]}
    return {"task": task, "id": qid, "history": [{"user": u, "bot": b} for u, b in zip(turns, bots)]}


def shape_path(out: Path, shape: str) -> Path:
    """Where a draft's copy in ``shape`` goes: beside it, ``draft.jsonl`` -> ``draft.mt-eval.jsonl``."""
    return out.with_name(f"{out.stem}.{shape}.jsonl")


def write_shapes(records: Sequence[dict[str, Any]], out: Path, shapes: Sequence[str], task: str = "AR") -> list[Path]:
    """Writes the records in each shape beside ``out``; returns the paths written."""
    paths = []
    for shape in shapes:
        path = shape_path(out, shape)
        rows = [as_shape(r, shape, task) for r in records]
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        paths.append(path)
    return paths
