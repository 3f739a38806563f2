"""The instruction checks where they used to disagree with the reference (the IFEval checkers lm-eval
ships): each case is the reference's verdict on a response written here (issue 21, defects 1-8),
plus the deliberate deviations, which README lists.
"""

from __future__ import annotations

import pytest

from parrot.instructions import InstructionSpec
from parrot.instructions.checks import sentences, words
from parrot.instructions.scoring import check_turn


def verdict(instruction_id: str, response: str, **kwargs) -> tuple[bool, bool]:
    (r,) = check_turn([InstructionSpec(instruction_id, kwargs, 1)], response)
    return r["strict"], r["loose"]


@pytest.mark.parametrize("instruction_id,kwargs", [
    ("punctuation:no_comma", {}), ("keywords:forbidden_words", {"forbidden_words": ["cat"]}),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"}),
])
@pytest.mark.parametrize("empty", ["", "   \n\t "])
def test_an_empty_answer_follows_no_instruction(instruction_id, kwargs, empty):
    assert verdict(instruction_id, empty, **kwargs) == (False, False)


@pytest.mark.parametrize("instruction_id,response,ok", [
    ("change_case:english_lowercase", "this answer is written in plain lowercase english.", True),
    ("change_case:english_lowercase", "这是一个用中文写的回答，没有大小写。", False),
    ("change_case:english_lowercase", "это ответ на русском языке, написанный строчными буквами.", False),
    ("change_case:english_capital", "THIS ANSWER IS WRITTEN IN CAPITAL LETTERS.", True),
    ("change_case:english_capital", "这是一个用中文写的回答，没有大小写。", False),
])
def test_english_case_instructions_require_english(instruction_id, response, ok):
    assert verdict(instruction_id, response)[0] is ok


@pytest.mark.parametrize("response,n", [
    ("मैं आज सुबह बाज़ार गया और सब्ज़ियाँ खरीदीं", 0),  # Hindi has no case: no capital words
    ("I moved to the U.S.A. last year", 2),  # I, U.S.A.
    ("P.S. call me", 1),
    ("NASA and the ESA met", 2),
])
def test_capital_words_are_cased_tokens_all_capitals(response, n):
    kw = {"capital_frequency": n, "capital_relation": "at least"}
    assert verdict("change_case:capital_word_frequency", response, **kw)[0]
    kw["capital_frequency"] = n + 1
    assert not verdict("change_case:capital_word_frequency", response, **kw)[0]


@pytest.mark.parametrize("text,n", [
    ("नमस्ते आप कैसे हैं दोस्त", 5),  # Hindi: vowel signs and viramas stay inside their word
    ("நான் இன்று காலை பள்ளிக்கு நடந்து சென்றேன் மகிழ்ச்சியாக", 7),  # Tamil
    ("don't split well-known words", 6),  # the reference's \w+: don, t, split, well, known, words
    ("snake_case stays one word", 4),
    ("我们今天去公园", 7),  # Chinese: one word per character, as Multi-IF counts
    ("東京へ行きます and back", 9),  # Japanese kana and kanji too, Latin words by spaces
    ("ผมชอบกินข้าวผัดมาก", 5),  # Thai: newmm, as Multi-IF (ผม ชอบ กิน ข้าวผัด มาก)
    ("วันนี้อากาศดี เราไปสวนกันเถอะ", 8),  # the space is no word
])
def test_words_keep_combining_marks(text, n):
    assert len(words(text)) == n, words(text)


def test_sentences_do_not_end_at_abbreviations():
    """Punkt's English model, as the reference (checked against lm-eval in tests/unit/test_ifeval_agreement.py):
    titles, times and dotted abbreviations do not end a sentence; "e.g." before a lowercase word does."""
    text = ("Dr. Smith met Mr. Jones at 5 p.m. in the U.S. on Friday. They talked, e.g. about J. R. R. Tolkien "
            "and the Ph.D. program! Was it fun? Yes.")
    assert sentences(text) == ["Dr. Smith met Mr. Jones at 5 p.m. in the U.S. on Friday.", "They talked, e.g.",
                               "about J. R. R. Tolkien and the Ph.D. program!", "Was it fun?", "Yes."]
    assert len(sentences("One. Two.\n\nThree")) == 3


@pytest.mark.parametrize("text,n", [
    ("今天天气很好。我们去公园吧！你来吗？", 3),  # Chinese: at 。！？
    ("今日は晴れです。\n公園に行きましょう", 2),  # Japanese: and at a line end
    ("आज मौसम अच्छा है। हम पार्क चलें! तुम आओगे?", 3),  # Hindi: at । ! ?
    ("วันนี้อากาศดี เราไปสวนกันเถอะ\nคุณจะมาไหม", 3),  # Thai: at spaces and line ends
])
def test_sentences_of_scripts_without_latin_full_stops(text, n):
    assert len(sentences(text)) == n, sentences(text)


def test_end_phrase_inside_a_closing_quote_and_quotation_can_both_hold():
    answer = '"I can help with that. Is there anything else I can help with?"'
    assert verdict("startend:end_checker", answer, end_phrase="Is there anything else I can help with?")[0]
    assert verdict("startend:quotation", answer)[0]


@pytest.mark.parametrize("answer", ["Thanks!\n\n**P.S.** bring a jacket", "Thanks!\nP. S. bring a jacket",
                                    "Thanks!\np.s. bring a jacket"])
def test_postscript_markers_in_markdown_or_spaced(answer):
    assert verdict("detectable_content:postscript", answer, postscript_marker="P.S.")[0]
    assert not verdict("detectable_content:postscript", "No postscript here.", postscript_marker="P.S.")[0]


@pytest.mark.parametrize("instruction_id,kwargs,response,ok", [
    # as the reference
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "section 1\nintro\nsection 2\nend", False),  # case-sensitive
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nintro\nSection 2\nend", True),
    ("detectable_format:json_format", {}, '```{"a": 1}```', True),  # a one-line fence
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True),
    ("combination:two_responses", {}, "******\nfirst answer\n******\nsecond answer", True),  # a leading separator
    ("combination:two_responses", {}, "first\n******\n\n******\nsecond", False),  # an empty one between
    # deliberate deviations (README: "Instruction checks and the reference")
    ("punctuation:no_comma", {}, "没有逗号，对吗", False),  # the full-width comma is a comma
    ("startend:quotation", {}, "“curly quotes count”", True),
])
def test_reference_behaviour_and_documented_deviations(instruction_id, kwargs, response, ok):
    assert verdict(instruction_id, response, **kwargs)[0] is ok


def test_fastchat_judgment_files_keep_every_turn_and_mark_failures():
    """Defect 9: FastChat's loaders key single judgments by (judge, question, model); turns past the
    second need their own judge tuple. A failed grading is written with score -1, not left out."""
    from parrot.datasets.fastchat import FAILED_SCORE, single_judgment_record

    rows = [single_judgment_record(question_id=7, model="m", judge_model="j", prompt_name="single-v1-multi-turn"
                                   if t > 1 else "single-v1", user_prompt="q", judgment="", score=None if t == 4 else 5.0,
                                   turn=t) for t in range(1, 9)]
    assert len({(tuple(r["judge"]), r["question_id"], r["model"]) for r in rows}) == 8
    assert [r["judge"][1] for r in rows[:3]] == ["single-v1", "single-v1-multi-turn", "single-v1-multi-turn-turn3"]
    assert [r["score"] for r in rows].count(FAILED_SCORE) == 1


MULTI_IF_LANGUAGES = {
    "en": "The weather today is rainy and cold, so we will stay at home and read a book together.",
    "fr": "Le temps est pluvieux et froid aujourd'hui, alors nous resterons à la maison pour lire un livre.",
    "es": "Hoy el tiempo está lluvioso y frío, así que nos quedaremos en casa leyendo un libro juntos.",
    "it": "Oggi il tempo è piovoso e freddo, quindi resteremo a casa a leggere un libro insieme.",
    "pt": "Hoje o tempo está chuvoso e frio, então vamos ficar em casa lendo um livro juntos.",
    "ru": "Сегодня дождливо и холодно, поэтому мы останемся дома и будем читать книгу вместе.",
    "hi": "आज मौसम बरसाती और ठंडा है, इसलिए हम घर पर रहेंगे और साथ में एक किताब पढ़ेंगे।",
    "zh": "今天下雨又很冷，所以我们会待在家里一起看书。",
}


@pytest.mark.parametrize("code", sorted(MULTI_IF_LANGUAGES))
def test_response_language_tells_the_eight_multi_if_languages_apart(code):
    passes = [c for c in MULTI_IF_LANGUAGES
              if verdict("language:response_language", MULTI_IF_LANGUAGES[code], language=c)[0]]
    assert passes == [code]  # zh also matches langdetect's zh-cn / zh-tw
