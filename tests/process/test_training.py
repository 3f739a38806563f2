"""Training: configs, input validation, exact label masks, and real DeepSpeed ZeRO-2 runs on CPU of a
tiny random-init Llama (SmolLM2 tokenizer) for SFT (with resume), the asker (on S3, then served by
URL) and CaPO (preference accuracy on its own pairs)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from parrot.errors import ConfigError
from tests.conftest import free_port, requires_model, start_service
from tests.helpers.training_fixtures import asker_rows, preference_rows, sharegpt_rows, tiny_model, write_jsonl
from training.config import AskerConfig, CaPOConfig, SFTConfig, load_config
from training.data import (
    IGNORE,
    DatasetError,
    load_asker_examples,
    load_preference_pairs,
    load_sft_examples,
    tokenize_example,
)

runner = CliRunner()


# ----------------------------------------------------------------------------- configs and CLI


def test_train_help_lists_generated_flags():
    from parrot.cli import app

    for method, flag in (("sft", "--max-length"), ("asker", "--loss-on"), ("capo", "--sft-weight")):
        out = runner.invoke(app, ["train", method, "--help"], env={"COLUMNS": "200"})
        assert out.exit_code == 0, out.output
        for expected in (flag, "--config", "--dry-run", "--deepspeed", "--kubernetes-gpus-per-node"):
            assert expected in out.output


def test_config_precedence_defaults_yaml_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"beta": 0.3, "learning_rate": 1e-4, "kubernetes": {"nodes": 2, "image": "x:1"}}))
    cfg = load_config(CaPOConfig, str(f), {"learning_rate": 5e-5, "kubernetes.image": "y:2"})
    assert (cfg.beta, cfg.learning_rate, cfg.sft_weight) == (0.3, 5e-5, 0.0)  # yaml, flag, default
    assert (cfg.kubernetes.nodes, cfg.kubernetes.image) == (2, "y:2")
    from parrot.cli import app

    out = runner.invoke(app, ["train", "capo", "--config", str(f), "--beta", "0.5", "--dry-run",
                              "--dataset", "d.jsonl", "--output", "o"])
    assert out.exit_code == 0, out.output
    printed = yaml.safe_load(out.output)
    assert (printed["beta"], printed["learning_rate"], printed["method"]) == (0.5, 1e-4, "capo")


@pytest.mark.parametrize("data, message", [
    ({"lr": 1}, "unknown key(s) lr"),
    ({"launcher": "slurm"}, "launcher is 'slurm'"),
    ({"deepspeed": "zero9"}, "deepspeed is 'zero9'"),
    ({"kubernetes": {"tolerations": ["gpu"]}}, "key=value:Effect"),
    ({"beta": 0}, "beta is 0"),
])
def test_config_errors_name_the_field(tmp_path, data, message):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(CaPOConfig, str(f))


def test_dataset_errors_name_file_line_and_field():
    bad_asker = json.dumps({"id": "a", "messages": [{"role": "assistant", "content": "q"},
                                                    {"role": "user", "content": "answer"}], "source": "x"})
    with pytest.raises(DatasetError, match=r"a.jsonl:2: field 'messages\[1\]'"):
        load_asker_examples("a.jsonl", json.dumps(asker_rows(1)[0]) + "\n" + bad_asker + "\n")
    row = preference_rows(1)[0] | {"strategy": "context_swap"}
    with pytest.raises(DatasetError, match=r"p.jsonl:1: field 'strategy': is 'context_swap'"):
        load_preference_pairs("p.jsonl", json.dumps(row))
    row = preference_rows(1)[0] | {"chosen": [{"role": "user", "content": "x"}]}
    with pytest.raises(DatasetError, match=r"field 'chosen'"):
        load_preference_pairs("p.jsonl", json.dumps(row))
    with pytest.raises(DatasetError, match=r"s.jsonl:1: field 'messages\[0\].role'"):
        load_sft_examples("s.jsonl", json.dumps({"messages": [{"role": "bot", "content": "x"}]}))


# ----------------------------------------------------------------------------- label masks


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from parrot.modelstore import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2"))


def labelled_runs(tokenizer, row) -> list[str]:
    """The text of each maximal run of tokens that carry loss."""
    runs, current = [], []
    for tok, label in zip(row["input_ids"], row["labels"]):
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == tok
            current.append(tok)
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs]


pytestmark_model = requires_model


@requires_model
def test_sft_labels_cover_exactly_the_assistant_turns(tokenizer):
    ex = load_sft_examples("s.jsonl", json.dumps(sharegpt_rows(1)[0]))[0]
    row = tokenize_example(tokenizer, ex, 512)
    assert labelled_runs(tokenizer, row) == ["Use sorted(xs) or xs.sort().<|im_end|>", "Pass reverse=True.<|im_end|>"]
    # Everything else (system prompt, role headers, user turns) is context only.
    assert sum(label != IGNORE for label in row["labels"]) == len(
        tokenizer("Use sorted(xs) or xs.sort().<|im_end|>Pass reverse=True.<|im_end|>", add_special_tokens=False)["input_ids"])


@requires_model
def test_capo_drops_pairs_whose_prompt_fills_max_length(tokenizer):
    from training.capo import completion_ids, pairs_within

    pairs = load_preference_pairs("p.jsonl", "\n".join(json.dumps(r) for r in preference_rows(3)))
    long_row = dict(preference_rows(1)[0], prompt=[{"role": "user", "content": "word " * 400}])
    pairs += load_preference_pairs("q.jsonl", json.dumps(long_row))
    starts = [completion_ids(tokenizer, p.prompt, p.chosen)[1] for p in pairs]
    limit = max(starts[:3]) + 1  # every short prompt leaves an answer token; the long one does not
    assert starts[3] >= limit
    assert pairs_within(tokenizer, pairs, limit) == pairs[:3]
    with pytest.raises(ConfigError, match="raise --max-length"):
        pairs_within(tokenizer, pairs[3:], limit)


@requires_model
def test_asker_labels_cover_exactly_the_target_user_turn(tokenizer):
    text = json.dumps(asker_rows(1)[0])
    last = tokenize_example(tokenizer, load_asker_examples("a.jsonl", text)[0], 512)
    assert labelled_runs(tokenizer, last) == ["And in reverse?<|im_end|>"]
    every = tokenize_example(tokenizer, load_asker_examples("a.jsonl", text, loss_on="all")[0], 512)
    assert labelled_runs(tokenizer, every) == ["How do I sort a list in Python?<|im_end|>", "And in reverse?<|im_end|>"]
    # A sequence cut before its target turn has nothing to learn and is dropped.
    assert tokenize_example(tokenizer, load_asker_examples("a.jsonl", text)[0], 20) is None


# ----------------------------------------------------------------------------- real training


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module", autouse=True)
def _teardown_process_group():
    yield
    from training import metrics
    from training.runtime import finish_process

    metrics.stop_exposing()
    finish_process()


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update({k: v.float() for k, v in load_file(str(f)).items()})
    return out


def common(tmp_path: Path, tiny: Path, **kw) -> dict:
    return {"model": str(tiny), "deepspeed": "zero2", "precision": "bf16", "learning_rate": 3e-3, "warmup_ratio": 0.0,
            "lr_scheduler": "constant", "logging_steps": 1, "max_length": 256, **kw}


@requires_model
def test_sft_trains_under_zero2_resumes_and_exposes_metrics(tmp_path, tiny):
    import httpx

    from training import sft

    data = write_jsonl(tmp_path / "sft.jsonl", sharegpt_rows(8))
    out = tmp_path / "store" / "sft-run"
    port = free_port()
    base = common(tmp_path, tiny, dataset=str(data), output=str(out), batch_size=4, save_steps=2,
                  work_dir=str(tmp_path / "work"), metrics_port=port)
    first = sft.train(SFTConfig(**base, max_steps=2))
    assert first.global_step == 2 and first.resumed_from is None
    assert (out / "checkpoints" / "checkpoint-2" / "COMPLETE").is_file()
    # A second attempt on the same run folder resumes from the uploaded checkpoint: steps 3-4 only.
    second = sft.train(SFTConfig(**base, max_steps=4))
    assert second.resumed_from and second.resumed_from.endswith("checkpoint-2")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(r["tokens_per_second"] > 0 and r["step_seconds"] > 0 for r in rows)
    before, after = weights(tiny), weights(out / "model")
    assert before.keys() <= after.keys()
    unchanged = [k for k in before if (before[k].bfloat16().float() == after[k]).all()]
    assert not unchanged, f"parameters not trained: {unchanged}"
    model_dir = out / "model"
    assert json.loads((model_dir / "parrot_model.json").read_text())["role"] == "responder"
    assert (model_dir / "chat_template.jinja").is_file() or "chat_template" in (model_dir / "tokenizer_config.json").read_text()
    assert list((out / "logs").glob("train-*.log")) and json.loads((out / "summary.json").read_text())["global_step"] == 4
    scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for name in ("parrot_train_loss", "parrot_train_tokens_per_second", "parrot_train_step_seconds_count",
                 "parrot_train_global_step"):
        assert f'{name}{{method="sft",run="sft-run"' in scrape


@requires_model
def test_capo_reaches_preference_accuracy_on_its_pairs(tmp_path, tiny):
    from training import capo
    from training import metrics as m

    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(3))
    out = tmp_path / "capo-run"
    result = capo.train(CaPOConfig(**common(tmp_path, tiny, dataset=str(data), output=str(out), batch_size=3,
                                            max_steps=3, save_steps=100, beta=0.1, learning_rate=5e-3,
                                            work_dir=str(tmp_path / "work"))))
    s = result.summary
    assert s["train/all/accuracy"] > 0.9 and s["train/all/margin"] > 0
    for strategy in ("context_neglect", "context_hallucination", "context_misunderstanding"):
        assert s[f"train/{strategy}/pairs"] == 1 and f"train/{strategy}/accuracy" in s
        assert m.REWARD_ACCURACY.labels("capo", "capo-run", strategy, "train")._value.get() == s[f"train/{strategy}/accuracy"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] and "rewards/accuracies" in rows[-1]
    assert "train/all/accuracy" in rows[-1]


@pytest.fixture
def s3(monkeypatch):
    from tests.helpers.s3server import Moto

    server = Moto()
    server.start()
    env = {"PARROT_S3_ENDPOINT": server.endpoint, "PARROT_S3_ACCESS_KEY": "train-test", "PARROT_S3_SECRET_KEY": "train-secret"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield env
    server.stop()


@requires_model
def test_asker_trains_on_s3_and_serves_by_url(tmp_path, tiny, s3):
    import grpc

    from parrot.modelstore import resolve_model
    from parrot.storage import open_store
    from parrot.v1 import conversation_pb2, responder_pb2, responder_pb2_grpc
    from training import asker

    bucket = f"s3://parrot-train/{uuid.uuid4().hex[:8]}"
    data = "".join(json.dumps(r) + "\n" for r in asker_rows(6)).encode()
    asyncio.run(open_store(bucket).put("datasets/asker.jsonl", data))
    result = asker.train(AskerConfig(**common(tmp_path, tiny, dataset=f"{bucket}/datasets/asker.jsonl",
                                              output=f"{bucket}/runs/asker-1", batch_size=3, max_steps=2,
                                              save_steps=2, work_dir=str(tmp_path / "work"))))
    assert result.model_url == f"{bucket}/runs/asker-1/model"
    fetched = resolve_model(result.model_url)
    assert json.loads((fetched / "parrot_model.json").read_text())["role"] == "asker"
    assert resolve_model(result.model_url) == fetched  # the cached copy is reused
    svc = start_service(tmp_path, ["all", "--model", result.model_url, "--dtype", "float32"], env_extra=s3)
    try:
        with grpc.insecure_channel(svc.grpc_target) as ch:
            reply = responder_pb2_grpc.ResponderStub(ch).Respond(responder_pb2.RespondRequest(
                conversation=conversation_pb2.Conversation(messages=[conversation_pb2.Message(
                    role=conversation_pb2.ROLE_USER, content="Hello there")]),
                params=conversation_pb2.GenerationParams(max_tokens=4)), timeout=120)
        assert reply.text is not None
        assert "role-swapped" in svc.log()
    finally:
        svc.stop()
