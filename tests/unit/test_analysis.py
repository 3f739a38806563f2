"""Unit tests of parrot.analysis: context detector, follow-up filters, dataset stats, bootstrap.

All examples are our own sentences.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from parrot.analysis import (
    ANAPHORA,
    ELLIPSIS,
    EXPLICIT_REFERENCE,
    KINDS,
    REASONS,
    FilterCounts,
    FollowUpFilter,
    bootstrap_ci,
    context_dependent_turns,
    conversation_stats,
    dataset_stats,
    distinct_n,
    is_context_dependent,
    near_duplicate,
    normalize,
    score_summary,
)
from parrot.analysis import bootstrap as bootstrap_module
from parrot.conversation import Message, Role

# ---------------------------------------------------------------------------- context detector

ANAPHORA_EXAMPLES = [
    "Can you make it shorter?",
    "Why is that?",
    "Is that true?",
    "How does that work?",
    "What are the main differences between them?",
    "Can you give me an example of how to use it?",
    "Who wrote it?",
    "When did he become president?",
    "What did she do after that?",
    "Are these correct?",
    "Which of those would you recommend for a beginner?",
    "I don't understand that part.",
    "Can you translate this into Spanish?",
    "What's a good name for it?",
    "Give me a catchy title for this essay.",
    "Is it safe?",
    "Is it possible?",
    "What are their main advantages?",
    "How do I get there from the airport?",
    "Which one is cheaper?",
    "I prefer the second one. Why might it be better?",
    "Do the same for the last paragraph.",
    "Can you compare the former with the latter?",
    "How much does that cost?",
    "What is the time complexity of this?",
    "Can you explain it like I'm five?",
    "Does it work on Windows too?",
    "Rewrite them as a numbered list.",
    "What happens to its value after the loop?",
    "Is the above code thread-safe?",
    "Does this apply to cats as well?",
    "What year was that?",
    "Can you add comments to that code?",
]
ELLIPSIS_EXAMPLES = [
    "And in Python?",
    "Why?",
    "What about Java?",
    "How about a vegetarian version?",
    "Shorter, please.",
    "More",
    "Another one",
    "Again, but funnier.",
    "Continue",
    "Explain further.",
    "Now in French.",
    "Tell me more.",
    "Translate to German.",
    "Rewrite as a haiku.",
    "Summarize in three bullet points.",
    "Any other ideas?",
    "What else?",
    "Why not?",
    "In more detail, please.",
    "Use a dictionary instead.",
    "Make them rhyme.",
    "Go on.",
    "Yes, please.",
    "Same for the second question.",
    "Can you elaborate?",
    "What if I only have two eggs?",
    "Now do the same for Rust.",
    "For a five-year-old?",
    "Explain like I'm five.",
    "Be more specific.",
    "Add some examples too.",
    "Try again.",
]
EXPLICIT_EXAMPLES = [
    "You said the loop runs twice; why?",
    "Can you explain your answer?",
    "As you mentioned, prices went up. Why did that happen?",
    "In your previous response you used recursion.",
    "Go back to the first recipe.",
    "What did you mean by 'latent space'?",
    "Your code has a bug on line 3.",
    "The last answer was too long.",
    "You forgot to mention the cost.",
    "Can you continue from where you left off?",
    "Summarize what you wrote above.",
    "As mentioned, I'm vegan; adjust the menu accordingly.",
    "Is your solution O(n log n)?",
    "Use the example you gave earlier.",
    "The points listed above are too vague.",
    "Like you said, Python is slow. How can I speed up loops?",
    "Can you rewrite your email to sound friendlier?",
    "Translate your poem into French.",
    "Earlier in our conversation you recommended a book.",
    "You didn't answer my question.",
    "The previous version was better.",
    "Why did you suggest Rust over Go?",
    "Check your calculation again.",
    "I liked the story you wrote earlier.",
    "Let's get back to the marketing plan.",
    "Please redo the earlier example with real numbers.",
    "What was the original question?",
]
STANDALONE_EXAMPLES = [
    "It is raining in London today; what should I wear?",
    "Is it possible to learn Japanese in six months?",
    "It's important that children sleep well. How many hours do they need?",
    "What is the capital of France?",
    "This year I want to learn the guitar; where should I start?",
    "How long does it take to boil an egg?",
    "Is it safe to eat raw cookie dough?",
    "Write a Python function that reverses a string.",
    "I think that remote work is better for productivity. Do you agree?",
    "Explain the theory of relativity in simple terms.",
    "What time is it in Tokyo right now?",
    "I have a list of numbers; how do I sort it in descending order?",
    "My laptop is slow and it keeps crashing. What should I do?",
    "Summarize this article: The city council voted on Tuesday to expand the bike lane network across downtown.",
    "What does 'carpe diem' mean?",
    "Would it be a good idea to buy a house this spring?",
    "When it comes to investing, what are the safest options?",
    "Is it true that goldfish have a three-second memory?",
    "These days, what are the most popular programming languages?",
    "What is it like to live in Antarctica?",
    "Please write a cover letter for a software engineering job at a startup, highlighting my experience "
    "with distributed systems and my passion for developer tools.",
    "Fix this code:\n```python\nprint('hi'\n```",
    "Is there a way to speed up pandas groupby?",
    "How do I make my own sourdough starter and keep it alive?",
    "Write a short story about a dragon who loses its fire.",
    "Compose an email to my boss asking him for a day off.",
    "Albert Einstein was born in 1879. Where did he study?",
    "It seems that my code is slow. How can I profile a Python program?",
    "Explain how vaccines work and why they are important.",
    "What are the pros and cons of nuclear energy?",
    "Translate 'I love it when it rains' into French.",
    "Hi there! Can you recommend a good sci-fi novel?",
    "How much does it cost to fly from Paris to Rome?",
    "Tell this tale again as the grandmother would, with her memories.\n\nAt the village market a boy "
    "knocked over a basket of apples, and an old woman helped him gather them before the rain.",
    "Can you suggest a good book about the history of mathematics?",
    "Write a function that checks whether a number is prime, and explain how it works.",
    "Thank you so much!",
    "Describe the water cycle in a way that a ten-year-old could understand.",
]


def test_example_lists_are_large_enough() -> None:
    for examples in (ANAPHORA_EXAMPLES, ELLIPSIS_EXAMPLES, EXPLICIT_EXAMPLES, STANDALONE_EXAMPLES):
        assert len(examples) >= 25
        assert len(set(examples)) == len(examples)


@pytest.mark.parametrize("query", ANAPHORA_EXAMPLES)
def test_anaphora_examples(query: str) -> None:
    verdict = is_context_dependent(query, history_len=1)
    assert verdict.dependent, verdict
    assert ANAPHORA in verdict.kinds and verdict.cues


@pytest.mark.parametrize("query", ELLIPSIS_EXAMPLES)
def test_ellipsis_examples(query: str) -> None:
    verdict = is_context_dependent(query, history_len=2)
    assert verdict.dependent, verdict
    assert ELLIPSIS in verdict.kinds and verdict.cues


@pytest.mark.parametrize("query", EXPLICIT_EXAMPLES)
def test_explicit_reference_examples(query: str) -> None:
    verdict = is_context_dependent(query, history_len=3)
    assert verdict.dependent, verdict
    assert EXPLICIT_REFERENCE in verdict.kinds and verdict.cues


@pytest.mark.parametrize("query", STANDALONE_EXAMPLES)
def test_standalone_follow_ups_are_not_flagged(query: str) -> None:
    verdict = is_context_dependent(query, history_len=1)
    assert not verdict.dependent, verdict
    assert verdict.kinds == [] and verdict.cues == []


def test_first_turn_is_never_dependent() -> None:
    for query in ANAPHORA_EXAMPLES + ELLIPSIS_EXAMPLES + EXPLICIT_EXAMPLES:
        verdict = is_context_dependent(query, history_len=0)
        assert not verdict.dependent and verdict.kinds == [] and verdict.cues == []


def test_empty_and_pleasantries_are_not_dependent() -> None:
    for query in ("", "   ", "Thanks!", "Great, thank you so much.", "ok"):
        assert not is_context_dependent(query, 3).dependent


def test_kinds_are_ordered_and_cues_name_the_words() -> None:
    verdict = is_context_dependent("What about that? You said the code was fast.", 2)
    assert verdict.kinds == [k for k in KINDS if k in verdict.kinds]
    assert set(verdict.kinds) == {ANAPHORA, ELLIPSIS, EXPLICIT_REFERENCE}
    assert verdict.cues == ["that", "what about", "you said"]


@pytest.mark.parametrize(
    "query",
    [
        "Is it worth learning Latin in 2024?",
        "It takes about ten minutes to walk to the station from here, right?",
        "Does it make sense to refinance a mortgage when rates drop by one percent?",
        "Is it going to rain in Seattle tomorrow?",
        "It turns out my cat is allergic to chicken. What else can I feed a cat?",
        "It has been a while since I exercised. How do I start running again safely after a long break?",
    ],
)
def test_dummy_it_is_not_a_cue(query: str) -> None:
    assert "it" not in is_context_dependent(query, 1).cues


def test_pronouns_inside_pasted_material_are_ignored() -> None:
    story = (
        "The old lighthouse keeper climbed the stairs every night. He polished the lamp until it shone, "
        "and they say it could be seen from the far islands."
    )
    assert not is_context_dependent(f"Summarize this story:\n{story}", 4).dependent
    assert not is_context_dependent(f"Give this passage a title.\n\n{story}", 4).dependent
    assert not is_context_dependent(f'Is "it" a pronoun in the sentence "{story}"?', 4).dependent
    code = "```python\ndef area(r):\n    return 3.14 * r * r\n```"
    assert not is_context_dependent(f"Why does this return a float?\n{code}", 4).dependent
    # Pasted material does not hide a reference made outside it.
    assert is_context_dependent(f"Apply your previous fix to this code too:\n{code}", 4).dependent


def test_which_one_with_options_is_not_a_cue() -> None:
    assert not is_context_dependent("Which one is heavier, a kilogram of iron or a kilogram of feathers?", 1).dependent
    assert is_context_dependent("Which one is heavier?", 1).dependent


# ---------------------------------------------------------------------------- filters


def test_normalize() -> None:
    assert normalize("  Hello,   WORLD!\n How's it_going? ") == "hello world how s it going"
    assert normalize("Ｆｕｌｌｗｉｄｔｈ") == "fullwidth"
    assert normalize("?!") == ""


def test_near_duplicate() -> None:
    assert near_duplicate("Can you make it shorter?", "can you make it SHORTER")
    assert near_duplicate("Tell me more about the second option.", "Tell me more about the second option please.")
    assert not near_duplicate("Make it shorter.", "Make it longer.")
    assert not near_duplicate("What about in Java?", "What about in Rust?")
    assert not near_duplicate("Why?", "Write a sonnet about the sea in iambic pentameter.")
    assert near_duplicate("ok", "OK!") and not near_duplicate("ok", "no")
    assert near_duplicate("What about in Java?", "What about in Rust?", threshold=0.5)
    with pytest.raises(ValueError):
        near_duplicate("a", "b", threshold=0)


def test_follow_up_filter_reasons() -> None:
    f = FollowUpFilter()
    earlier = ["Plan a three-day trip to Lisbon.", "Can you add a day trip to Sintra?"]
    assert f.check("", earlier) == "empty"
    assert f.check(" \n\t ", earlier) == "empty"
    assert f.check("Why?", earlier) == "too_short"  # 4 characters
    assert f.check("Elaborate", earlier) == "too_short"  # one word
    assert f.check("can you add a day trip to Sintra", earlier) == "repetitive"
    assert f.check("Plan a three day trip to Lisbon!", earlier) == "repetitive"
    assert f.check("What should I pack for the trip?", earlier) is None
    assert f.check("What should I pack for the trip?") is None
    assert FollowUpFilter(min_chars=2, min_words=1).check("Why?", earlier) is None
    assert FollowUpFilter(near_dup_threshold=1.0).check("can you add a day trip to Sintra", earlier) == "repetitive"
    assert FollowUpFilter(near_dup_threshold=1.0).check("Could you add a day trip to Sintra?", earlier) is None
    assert set(REASONS) >= {"empty", "too_short", "repetitive"}


def test_follow_up_filter_blocked_terms() -> None:
    f = FollowUpFilter(blocked_terms=("forbidden word", "zap"))
    assert f.check("Please use the FORBIDDEN word here.") == "blocked"
    assert f.check("Can you zap it?") == "blocked"
    assert f.check("Tell me about zapping machines.") is None  # whole words only
    with pytest.raises(ValueError):
        FollowUpFilter(near_dup_threshold=1.5)


def test_filter_counts_add_merge_and_dict() -> None:
    a = FilterCounts()
    for reason in (None, None, "too_short", "repetitive", None):
        a.add(reason)
    b = FilterCounts()
    b.add("empty")
    b.add("custom_reason")
    assert a.as_dict() == {"checked": 5, "kept": 3, "dropped": {"empty": 0, "too_short": 1, "repetitive": 1, "blocked": 0}}
    merged = FilterCounts().merge(a).merge(b)
    assert merged.checked == 7 and merged.kept == 3 and merged.dropped_total == 4
    assert merged.dropped["custom_reason"] == 1 and merged.dropped["empty"] == 1
    assert FilterCounts.from_dict(json.loads(json.dumps(merged.as_dict()))) == merged
    assert FilterCounts.total([a, b]) == merged
    assert a.checked == 5  # merge into a new total leaves the parts alone


# ---------------------------------------------------------------------------- stats


def u(text: str) -> Message:
    return Message(Role.USER, text)


def a(text: str) -> Message:
    return Message(Role.ASSISTANT, text)


TINY = [
    [
        u("Write a haiku about autumn leaves."),  # 6 words
        a("Red leaves drift slowly down"),  # 5
        u("Make it funnier."),  # 3, dependent
        a("Leaves fall on my head"),  # 5
        u("What is the tallest mountain on Earth?"),  # 7, standalone
        a("Mount Everest."),  # 2
    ],
    [
        Message(Role.SYSTEM, "Be brief and precise."),  # not counted
        u("Name three primary colors."),  # 4
        a("Red, blue, yellow."),  # 3
    ],
    [
        u("Explain recursion."),  # 2
        a("A function calling itself."),  # 4
        u("Why?"),  # 1, dependent
        a("Because it solves subproblems."),  # 4
    ],
]


def test_dataset_stats_on_hand_computed_dataset() -> None:
    stats = dataset_stats(TINY)
    assert stats["sessions"] == 3
    assert stats["user_turns"] == 6 and stats["follow_ups"] == 3
    assert stats["turns_per_session"] == pytest.approx(2.0)
    assert stats["tokens_per_session"] == pytest.approx(46 / 3)
    assert stats["token_counter"] == "whitespace"
    assert stats["context_dependent"] == 2
    assert stats["context_dependent_per_session"] == pytest.approx(2 / 3)
    assert stats["context_dependent_fraction"] == pytest.approx(2 / 3)
    assert stats["context_dependent_kinds"]["anaphora"] == 1  # "it"
    assert stats["context_dependent_kinds"]["ellipsis"] == 2  # "make it ...", "why?"
    assert stats["distinct_2"] == pytest.approx(1.0)  # 17 user bigrams, all different
    json.dumps(stats, allow_nan=False)


def test_dataset_stats_with_tokenizer_and_empty() -> None:
    stats = dataset_stats(TINY, tokenizer_count=len)
    chars = sum(len(m.content) for c in TINY for m in c if m.role is not Role.SYSTEM)
    assert stats["tokens_per_session"] == pytest.approx(chars / 3)
    assert stats["token_counter"] == "tokenizer"
    empty = dataset_stats([])
    assert empty["sessions"] == 0 and empty["turns_per_session"] is None
    assert empty["context_dependent_fraction"] is None and empty["distinct_2"] is None
    json.dumps(empty, allow_nan=False)
    single = dataset_stats([[u("Hello there, what is a prime number?")]])
    assert single["follow_ups"] == 0 and single["context_dependent_fraction"] is None
    assert single["context_dependent_per_session"] == 0.0


def test_per_conversation_helpers() -> None:
    assert context_dependent_turns(TINY[0]) == [1]
    assert context_dependent_turns(TINY[1]) == []
    stats = conversation_stats(TINY[2])
    assert (stats.user_turns, stats.follow_ups, stats.tokens, stats.context_dependent) == (2, 1, 11, 1)
    assert stats.dependent_turns == [1]


def test_distinct_n() -> None:
    assert distinct_n(["a b a b", "a b"], 2) == pytest.approx(2 / 4)
    assert distinct_n(["x y z"], 1) == pytest.approx(1.0)
    assert distinct_n(["single"], 2) is None
    with pytest.raises(ValueError):
        distinct_n(["a b"], 0)


# ---------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_deterministic_by_seed() -> None:
    values = [3.0, 7.5, 6.0, 9.0, 4.5, 8.0, 5.5]
    first = bootstrap_ci(values, n_resamples=500, seed=11)
    assert first == bootstrap_ci(values, n_resamples=500, seed=11)
    assert first != bootstrap_ci(values, n_resamples=500, seed=12)
    mean, low, high = first
    assert mean == pytest.approx(np.mean(values))
    assert low <= mean <= high
    assert min(values) <= low and high <= max(values)


def test_bootstrap_edge_cases() -> None:
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert bootstrap_ci([4.0]) == (4.0, 4.0, 4.0)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    for bad in ({"n_resamples": 0}, {"confidence": 1.0}, {"confidence": 0.0}):
        with pytest.raises(ValueError):
            bootstrap_ci([1.0, 2.0], **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, float("nan")])


def test_bootstrap_blocks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.random.default_rng(5).normal(size=41)
    whole = bootstrap_ci(values, n_resamples=300, seed=2)
    monkeypatch.setattr(bootstrap_module, "_BLOCK_ELEMENTS", 100)
    assert bootstrap_ci(values, n_resamples=300, seed=2) == whole


def test_bootstrap_coverage_and_width_sanity() -> None:
    rng = np.random.default_rng(2024)
    hits = 0
    trials = 200
    for k in range(trials):
        sample = rng.normal(5.0, 2.0, size=60)
        _, low, high = bootstrap_ci(sample, n_resamples=400, seed=k)
        hits += low <= 5.0 <= high
    assert 0.88 <= hits / trials <= 0.99
    small = bootstrap_ci(rng.normal(0, 1, size=20), seed=1)
    large = bootstrap_ci(rng.normal(0, 1, size=2000), seed=1)
    assert (large[2] - large[1]) < (small[2] - small[1]) / 4
    narrow = bootstrap_ci(rng.normal(0, 1, size=50), confidence=0.5, seed=3)
    assert narrow[2] - narrow[1] > 0


def rec(qid: object, category: str, turn: int, score: float | None) -> dict:
    return {"question_id": qid, "category": category, "turn": turn, "score": score}


def test_score_summary_hand_computed() -> None:
    records = [
        rec(1, "writing", 1, 8.0),
        rec(1, "writing", 2, 6.0),
        rec(2, "math", 1, 4.0),
        rec(2, "math", 2, None),  # judge failure
        rec(3, "math", 1, 9.0),
        rec(3, "math", 2, 5.0),
        rec(3, "math", 3, 2.0),
    ]
    summary = score_summary(records, n_resamples=300, seed=4)
    assert summary["overall"]["mean"] == pytest.approx(34 / 6) and summary["overall"]["n"] == 6
    assert summary["per_turn"]["1"]["mean"] == pytest.approx(7.0) and summary["per_turn"]["1"]["n"] == 3
    assert summary["per_turn"]["2"]["mean"] == pytest.approx(5.5) and summary["per_turn"]["2"]["n"] == 2
    assert summary["per_turn"]["3"] == {"mean": 2.0, "low": 2.0, "high": 2.0, "n": 1}
    assert list(summary["per_turn"]) == ["1", "2", "3"]
    assert summary["per_category"]["writing"]["mean"] == pytest.approx(7.0)
    assert summary["per_category"]["math"]["mean"] == pytest.approx(20 / 4)
    assert summary["turn_drop"] == {"2": pytest.approx(-1.5), "3": pytest.approx(-5.0)}
    assert summary["judge_failures"] == 1
    assert summary["counts"] == {
        "records": 7,
        "scored": 6,
        "judge_failures": 1,
        "questions": 3,
        "judge_failures_per_turn": {"1": 0, "2": 1, "3": 0},
    }
    for block in [summary["overall"], *summary["per_turn"].values(), *summary["per_category"].values()]:
        assert block["low"] <= block["mean"] <= block["high"]
    assert summary == score_summary(records, n_resamples=300, seed=4)
    json.dumps(summary, allow_nan=False)


def test_score_summary_without_scores_has_no_nan() -> None:
    empty = score_summary([])
    assert empty["overall"] == {"mean": None, "low": None, "high": None, "n": 0}
    assert empty["per_turn"] == {} and empty["turn_drop"] == {}
    failed = score_summary([rec("a", "stem", 1, None), rec("a", "stem", 2, 7.0)])
    assert failed["per_turn"]["1"]["mean"] is None and failed["turn_drop"] == {"2": None}
    assert failed["per_category"]["stem"]["mean"] == 7.0
    json.dumps(empty, allow_nan=False)
    json.dumps(failed, allow_nan=False)


@pytest.mark.parametrize(
    "bad",
    [
        {"question_id": 1, "category": "x", "turn": 0, "score": 1.0},
        {"question_id": 1, "category": "x", "turn": "1", "score": 1.0},
        {"question_id": 1, "category": "x", "turn": 1, "score": float("inf")},
        {"question_id": 1, "category": "x", "turn": 1, "score": "9"},
        {"question_id": 1, "category": 3, "turn": 1, "score": 1.0},
        {"question_id": 1, "turn": 1, "score": 1.0},
    ],
)
def test_score_summary_rejects_bad_records(bad: dict) -> None:
    with pytest.raises(ValueError, match=r"records\[1\]"):
        score_summary([rec(1, "x", 1, 5.0), bad])
