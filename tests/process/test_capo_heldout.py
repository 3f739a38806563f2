"""CaPO on held-out pairs: the by-session split (never one session on both sides, deterministic), its
config checks, and a real tiny run whose summary and run folder carry the before/after report."""

from __future__ import annotations

import json

import pytest

from parrot.errors import ConfigError
from tests.conftest import requires_model
from tests.helpers.training_fixtures import preference_rows, tiny_model, write_jsonl
from training.capo_eval import (
    before_after,
    context_gap,
    likelihood_report,
    pair_session,
    probe_indices,
    split_pairs,
    without_history,
)
from training.config import CaPOConfig
from training.data import PreferencePair

STRATEGIES = ("context_neglect", "context_hallucination", "context_misunderstanding")


def pair(source_id: str, strategy: str = "context_neglect", first: str = "Q") -> PreferencePair:
    return PreferencePair(f"{source_id}:{strategy}", [{"role": "user", "content": first}],
                          [{"role": "assistant", "content": "good"}], [{"role": "assistant", "content": "bad"}],
                          strategy, extra={"source_id": source_id})


def test_split_never_puts_one_session_on_both_sides():
    # 60 sessions, two ShareGPT chunks each, three strategies per chunk
    pairs = [pair(f"s{i}_{chunk}", s) for i in range(60) for chunk in (0, 1) for s in STRATEGIES]
    train, held = split_pairs(pairs, 0.3)
    assert train and held and len(train) + len(held) == len(pairs)
    session = lambda p: pair_session(p).rsplit("_", 1)[0]  # noqa: E731
    assert not {session(p) for p in train} & {session(p) for p in held}
    assert 0.1 < len(held) / len(pairs) < 0.5
    again_train, again_held = split_pairs(list(reversed(pairs)), 0.3)  # file order does not matter
    assert {p.id for p in again_held} == {p.id for p in held}
    assert split_pairs(pairs, 0.0) == (pairs, [])
    # without a source_id the session is keyed by the prompt's first message
    a, b = pair("", first="How do I sort?"), pair("", first="How do I sort?")
    assert pair_session(a) == pair_session(b) != pair_session(pair("", first="Other"))
    with pytest.raises(ValueError):
        split_pairs(pairs, 1.0)


def test_before_after_report():
    pairs = [pair("a", "context_neglect"), pair("b", "context_neglect"), pair("c", "context_hallucination")]
    ref = [(-5.0, -4.0), (-3.0, -4.0), (-2.0, -2.0)]  # chosen more likely: 1 of 3 (a tie is not)
    policy = [(-1.0, -4.0), (-1.0, -6.0), (-1.0, -3.0)]
    rep = before_after(pairs, ref, policy, beta=0.5)
    assert rep["before"]["all"]["accuracy"] == pytest.approx(1 / 3)
    assert rep["before"]["context_neglect"] == {"pairs": 2, "accuracy": 0.5, "margin": pytest.approx(0.5 * 0.0)}
    assert rep["after"]["all"] == {"pairs": 3, "accuracy": 1.0, "margin": pytest.approx(0.5 * (3 + 5 + 2) / 3)}
    assert likelihood_report([], [], 0.1) == {}


def test_context_probe_pieces():
    system = {"role": "system", "content": "Be brief."}
    history = [system, {"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."},
               {"role": "user", "content": "What colour is it?"}]
    p = PreferencePair("x", history, [{"role": "assistant", "content": "Red."}], [{"role": "assistant", "content": "?"}],
                       "context_neglect")
    assert without_history(p).prompt == [system, history[-1]]
    no_history = PreferencePair("y", [history[-1]], p.chosen, p.rejected, "context_neglect")
    twin = PreferencePair("z", history, p.chosen, p.rejected, "context_hallucination")  # same prompt and chosen
    assert probe_indices([p, no_history, twin]) == [0]
    assert context_gap([(-2.0, 0.0), (0.0, 0.0)], [(-5.0, 0.0)], [0]) == pytest.approx(3.0)
    assert context_gap([], [], []) is None


def test_eval_fraction_config_checks():
    with pytest.raises(ConfigError, match="eval_fraction"):
        CaPOConfig(model="m", dataset="d", output="o", eval_fraction=1.0)
    with pytest.raises(ConfigError, match="only one"):
        CaPOConfig(model="m", dataset="d", output="o", eval_fraction=0.2, eval_dataset="e")


@pytest.fixture(scope="module", autouse=True)
def _teardown_process_group():
    yield
    from training.runtime import finish_process

    finish_process()


@requires_model
def test_capo_with_eval_fraction_reports_held_out_pairs_before_and_after(tmp_path):
    from training import capo

    tiny = tiny_model(tmp_path / "tiny")
    rows = preference_rows(24)  # 24 sessions (conv-0 .. conv-23), strategies in turn
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "capo-run"
    cfg = CaPOConfig(model=str(tiny), deepspeed="zero2", precision="bf16", learning_rate=5e-3, warmup_ratio=0.0,
                     lr_scheduler="constant", logging_steps=1, max_length=256, dataset=str(data), output=str(out),
                     batch_size=4, max_steps=3, save_steps=100, beta=0.1, eval_fraction=0.3,
                     work_dir=str(tmp_path / "work"))
    result = capo.train(cfg)
    s = result.summary
    _, held = split_pairs([pair(r["source_id"], r["strategy"]) for r in rows], 0.3)
    assert s["heldout/before/all/pairs"] == len(held) == s["eval/all/pairs"]
    for when in ("before", "after"):
        assert 0 <= s[f"heldout/{when}/all/accuracy"] <= 1
    report = json.loads((out / "heldout_preferences.json").read_text())
    assert report["step"] == 3 and set(report) == {"step", "before", "after", "context_probe"}
    probe = report["context_probe"]
    assert 1 <= probe["pairs"] <= len(held)  # distinct (prompt, chosen) with history; fixture prompts repeat
    assert probe["before"] != probe["after"] and s["heldout/context_probe/after"] == probe["after"]
    assert report["after"]["all"]["margin"] == pytest.approx(s["heldout/after/all/margin"])
    # the DPO implicit reward margin is the trained model's margin minus the reference's
    assert s["eval/all/margin"] == pytest.approx(report["after"]["all"]["margin"] - report["before"]["all"]["margin"],
                                                 abs=1e-4)
    rows_logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "heldout/after/all/accuracy" in rows_logged[-1]
