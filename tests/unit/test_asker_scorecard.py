"""The asker scorecard's metrics on hand-made contexts with known answers, its by-session bootstrap,
and reading contexts from ShareGPT / asker-example files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from parrot.asking.scorecard import (
    PEOPLE,
    Context,
    FollowUp,
    first_word,
    repeats_earlier_user_turn,
    score,
    session_bootstrap,
    total_variation,
    wasserstein_1d,
)
from parrot.asking.scorecard_io import contexts_from_text, sample_contexts
from parrot.asking.training_data import is_held_out
from parrot.conversation import Message, Role
from parrot.datasets import DatasetError

U, A = Role.USER, Role.ASSISTANT


def ctx(cid: str, session: str, first: str, human: str | None) -> Context:
    return Context(cid, session, (Message(U, first), Message(A, "Here is an answer.")), human)


CONTEXTS = [
    ctx("c1", "s1", "How do I sort a list in Python?", "And in reverse order?"),  # ellipsis
    ctx("c2", "s2", "What is a closure?", "Can you explain it again?"),  # anaphora + ellipsis
    ctx("c3", "s3", "Name a large city.", "What is the capital of France?"),  # self-contained
]
ASKER = [
    FollowUp("How do I sort a list in Python?"),  # repeats the earlier user turn, not dependent
    FollowUp("What does it return?"),  # anaphora
    FollowUp(None, error="UNAVAILABLE: no acceptable question"),  # no follow-up
]


def test_known_answers_per_row():
    card = score(CONTEXTS, {"a": ASKER}, n_resamples=200)
    rows = card.rows
    assert card.columns == [PEOPLE, "a"] and card.contexts == 3 and card.sessions == 3
    assert rows["no_followup"]["a"].value == pytest.approx(1 / 3)
    assert PEOPLE not in rows["no_followup"]
    # rates are over the follow-ups that came back: 2 for the asker, 3 for people
    assert rows["context_dependent"]["a"].value == pytest.approx(1 / 2)
    assert rows["context_dependent"][PEOPLE].value == pytest.approx(2 / 3)
    assert rows["anaphora"]["a"].value == pytest.approx(1 / 2)
    assert rows["anaphora"][PEOPLE].value == pytest.approx(1 / 3)
    assert rows["ellipsis"]["a"].value == 0.0
    assert rows["ellipsis"][PEOPLE].value == pytest.approx(2 / 3)
    assert rows["repeats"]["a"].value == pytest.approx(1 / 2)
    assert rows["repeats"][PEOPLE].value == 0.0
    assert rows["words"]["a"].value == pytest.approx((8 + 4) / 2)
    assert rows["words"]["a"].n == 2
    # word counts: asker {8, 4} vs people {4, 5, 6} -> W1 = mean |sorted CDF gap| area = 1.5
    assert rows["words_w1"]["a"].value == pytest.approx(wasserstein_1d([8, 4], [4, 5, 6]))
    # first words: asker {how, what} vs people {and, can, what}: TV = 0.5*(1/2 + 1/2 + 1/3 + 1/3 + |1/2-1/3|)
    assert rows["first_word_tv"]["a"].value == pytest.approx(total_variation(["how", "what"], ["and", "can", "what"]))
    assert "end_agreement" not in rows and "perplexity" not in rows  # no ends, no NLL given
    for row in rows.values():
        for e in row.values():
            assert e.low is None or e.low <= e.value + 1e-9 <= e.high + 2e-9


def test_nll_rows_pool_tokens_and_exponentiate():
    card = score(CONTEXTS, {"a": ASKER}, {"a": [(6.0, 3), (2.0, 1), None]}, n_resamples=50)
    assert card.rows["nll"]["a"].value == pytest.approx(8.0 / 4)
    assert card.rows["perplexity"]["a"].value == pytest.approx(math.exp(2.0))
    assert card.rows["perplexity"]["a"].n == 2
    assert PEOPLE not in card.rows["nll"]


def test_end_agreement_counts_ends_where_the_person_ended():
    contexts = [*CONTEXTS[:2], ctx("c4", "s1", "Thanks, that is all.", None)]
    followups = [FollowUp("ok and then?"), FollowUp(None, ended=True), FollowUp(None, ended=True)]
    card = score(contexts, {"a": followups}, n_resamples=50)
    assert card.rows["end_agreement"]["a"].value == pytest.approx(2 / 3)  # c1 asked, c4 ended: agree; c2 ended: not
    assert card.rows["no_followup"]["a"].value == 0.0  # an end is a typed answer, not a missing one


def test_small_measures():
    assert repeats_earlier_user_turn("how do I sort a list in python", CONTEXTS[0])
    assert not repeats_earlier_user_turn("And in reverse order?", CONTEXTS[0])
    assert first_word("  What's up?") == "what" and first_word("") == ""
    assert wasserstein_1d([1, 1, 1], [1, 1]) == 0.0
    assert wasserstein_1d([0, 1], [1, 2]) == pytest.approx(1.0)
    assert wasserstein_1d([0], [10]) == pytest.approx(10.0)
    assert wasserstein_1d([], [1]) is None
    assert total_variation(["a", "b"], ["a", "a"]) == pytest.approx(0.5)
    assert total_variation(["a"], ["b"]) == pytest.approx(1.0)


def test_bootstrap_resamples_whole_sessions():
    sessions = ["s1", "s1", "s1", "s2"]
    values = [1.0, 1.0, 1.0, 0.0]
    seen: list[np.ndarray] = []

    def mean(idx: np.ndarray) -> float:
        seen.append(np.sort(idx))
        return float(np.mean([values[i] for i in idx]))

    est = session_bootstrap(sessions, mean, 4, n_resamples=300, seed=3)
    assert est.value == 0.75
    for idx in seen[1:]:
        # every resample holds whole sessions: s1's three items together, or none of them
        assert sorted(set(idx.tolist()) & {0, 1, 2}) in ([], [0, 1, 2])
        assert np.count_nonzero(idx == 0) == np.count_nonzero(idx == 1) == np.count_nonzero(idx == 2)
    assert est.low == 0.0 and est.high == 1.0
    assert session_bootstrap(sessions, mean, 4, n_resamples=300, seed=3) == est  # seeded: same interval


def test_sample_spreads_over_sessions_and_is_deterministic():
    contexts = [ctx(f"{s}:{k}", s, "Q?", f"follow {k}") for s in ("a", "b", "c") for k in range(3)]
    picked = sample_contexts(contexts, 3, seed=1)
    assert len({c.session for c in picked}) == 3
    assert sample_contexts(contexts, 3, seed=1) == picked
    assert len({c.session for c in sample_contexts(contexts, 5, seed=1)}) == 3
    assert sample_contexts(contexts, 0) == contexts


def sharegpt_line(cid: str, *turns: str) -> str:
    return json.dumps({"id": cid, "conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": t}
                                                    for i, t in enumerate(turns)]})


SHAREGPT = "\n".join(sharegpt_line(f"conv{i}", f"How do I make dish number {i} at home?", "Like this, step by step.",
                                   "And without an oven?", "Use a pan instead.") for i in range(40)) + "\n"


def test_sharegpt_contexts_and_the_held_out_split():
    contexts = contexts_from_text("f.jsonl", SHAREGPT)
    assert len(contexts) == 80 and contexts[0].human == "And without an oven?"
    assert contexts[1].human is None and len(contexts[1].messages) == 4  # the person ended after the 2nd answer
    assert [m.role for m in contexts[0].messages] == [U, A]
    held = contexts_from_text("f.jsonl", SHAREGPT, holdout=0.3)
    assert 0 < len(held) < 80
    assert all(is_held_out(c.session, 0.3) for c in held)  # the split of `parrot data asker --holdout`
    assert held[0].example is not None and held[0].example["messages"][-1]["role"] == "assistant"


def test_a_file_without_follow_ups_is_rejected():
    one_turn = sharegpt_line("x", "Hello there, what is a monad?", "A monoid in the category of endofunctors.") + "\n"
    with pytest.raises(DatasetError, match="holds no follow-ups"):
        contexts_from_text("single.jsonl", one_turn)


def test_asker_example_files_are_contexts_too():
    from parrot.asking.training_data import AskerDataConfig, build_asker_dataset
    from parrot.datasets import dumps_jsonl, load_sharegpt

    rows, _ = build_asker_dataset([("f.jsonl", load_sharegpt("f.jsonl", SHAREGPT))], AskerDataConfig(end_examples=True))
    contexts = contexts_from_text("examples.jsonl", dumps_jsonl(rows))
    assert len(contexts) == len(rows) == 80
    assert sum(c.human is None for c in contexts) == 40  # one end per session
    assert contexts == contexts_from_text("f.jsonl", SHAREGPT)  # the same contexts as from the ShareGPT file
    with pytest.raises(DatasetError, match="messages"):
        contexts_from_text("bad.jsonl", json.dumps({"id": "x", "source": "s", "messages": []}) + "\n")
