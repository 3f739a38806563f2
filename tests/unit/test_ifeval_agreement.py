"""Our instruction checks against the reference, lm-eval's IFEval checkers, run offline on answers we
wrote (tests/fixtures/ifeval_answers.jsonl): every answer with every instruction of the grid, strict
and loose. The figure on other people's answers is measured with `python -m tests.helpers.ifeval_reference`
(README gives the command and the result)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.ifeval_reference import GRID, agreement, answers_from, punkt_data_dir, reference_verdicts

ANSWERS = Path(__file__).resolve().parents[1] / "fixtures" / "ifeval_answers.jsonl"


def test_agreement_with_lm_eval_on_our_answers_is_at_least_99_5_percent():
    result = agreement(answers_from(ANSWERS))
    assert result["answers"] == 30 and result["checks"] == 30 * len(GRID) * 2
    assert result["agreement_outside_documented"] >= 0.995, (result["disagreements"], result["examples"][:3])


def test_the_reference_is_really_consulted():
    """The harness would notice a disagreement: the reference and a check that always passes differ."""
    ref = [reference_verdicts("detectable_format:title", {}, a)[0] for a in answers_from(ANSWERS)]
    assert any(ref) and not all(ref)  # a title in some answers only: "always passes" would disagree


@pytest.mark.parametrize("text,n", [("Dr. Smith arrived at 5 p.m. today. He left early.", 2),
                                    ("It was fine... I think. Yes!", 3)])
def test_reference_sentence_counts_come_from_the_offline_punkt_model(tmp_path, text, n):
    import sys

    from tests.helpers.ifeval_reference import reference_instructions

    reference_instructions()
    util = sys.modules["_lm_eval_ifeval_reference.instructions_util"]
    assert util.count_sentences(text) == n
    assert (punkt_data_dir(tmp_path) / "tokenizers" / "punkt_tab" / "english" / "abbrev_types.txt").read_text().count("\n") > 100
