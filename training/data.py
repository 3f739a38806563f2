"""Training inputs: reading them from the object store, validating them, and label masks.

Formats (every problem raises ``DatasetError`` naming the file, the line and the field):

- **SFT**: ShareGPT records (``{"id", "conversations": [{"from", "value"}...]}``, a JSON array or
  JSONL; the coordinator's collection output is this format) or chat records
  ``{"id"?, "messages": [{"role", "content"}...]}``. The loss is on every assistant message.
- **Asker**: JSONL rows ``{"id", "messages", "source"}``: the role-swapped chat of
  ``parrot.asking.prompting.to_role_swapped`` followed by the target user turn as the final
  ``assistant`` message. The loss is on that final message (``loss_on="all"``: on every
  assistant message, i.e. every user turn of the original conversation).
- **CaPO**: JSONL rows in TRL's conversational preference format: ``{"prompt": [messages],
  "chosen": [{"role": "assistant", ...}], "rejected": [...], "strategy", "source_id", "turn",
  "models"}``; ``strategy`` is one of ``training.config.STRATEGIES``.

Label masks: the conversation is rendered once with the model's chat template; the characters
of a trained message run from the end of the prompt rendered up to it (with the generation
prompt) to the end of the text rendered through it, trailing whitespace excluded. So the loss
covers the message's text and its end-of-turn token (``<|im_end|>``), which teaches the model to
stop, and nothing of the role headers. Tokens are labelled by their character offsets in the
one tokenization of the full text, the same tokens the model services see when they serve it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import unquote, urlsplit

from parrot.datasets import DatasetError, iter_jsonl, iter_records, load_sharegpt
from parrot.errors import ConfigError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
IGNORE = -100  # label of tokens without loss


# ----------------------------------------------------------------------------- reading


def split_url(url: str) -> tuple[str, str]:
    """An object-store URL of a file -> (store URL, key). ``s3://b/a/x.jsonl`` -> (``s3://b``, ``a/x.jsonl``)."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ConfigError(f"{url!r} is not an s3:// URL")
    key = parts.path.strip("/")
    if not key:
        raise ConfigError(f"{url!r} names a bucket, not a file; use s3://bucket/path/file.jsonl")
    return f"s3://{parts.netloc}", key


def local_path(url: str) -> Path | None:
    """The local path of a plain path or ``file://`` URL; None for other schemes."""
    if "://" not in url:
        return Path(url).expanduser()
    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    return None


def read_input(url: str) -> tuple[str, bytes]:
    """(display name, bytes) of a training input: a local path, file:// or s3:// URL."""
    from parrot.storage import ObjectNotFound, open_store

    path = local_path(url)
    if path is not None:
        try:
            return str(path), path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e
    if not url.startswith("s3://"):
        raise ConfigError(f"{url!r}: use a path, file:///abs/path or s3://bucket/key")
    store_url, key = split_url(url)
    store = open_store(store_url)
    try:
        return url, asyncio.run(store.get(key))
    except ObjectNotFound as e:
        raise ConfigError(f"{url}: no such object") from e


# ----------------------------------------------------------------------------- records


@dataclass
class ChatExample:
    """One training sequence: chat messages and the indices of the messages that carry loss."""

    id: str
    messages: list[dict[str, str]]
    train_on: list[int]
    line: int = 0
    source: str = ""


@dataclass
class PreferencePair:
    id: str
    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]
    strategy: str
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def trl_row(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


def _messages(name: str, line: int, value: Any, where: str, *, allow_empty: bool = False) -> list[dict[str, str]]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise DatasetError(name, line, where, "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(m, dict):
            raise DatasetError(name, line, at, "must be an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DatasetError(name, line, f"{at}.role", f"is {role!r}; allowed: {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise DatasetError(name, line, f"{at}.role", "system is only allowed as the first message")
        if not isinstance(content, str):
            raise DatasetError(name, line, f"{at}.content", "must be a string")
        out.append({"role": role, "content": content})
    return out


def load_sft_examples(name: str, content: str | bytes) -> list[ChatExample]:
    """ShareGPT or ``{"messages"}`` records; loss on every non-empty assistant message.

    Records without an assistant message with text are skipped (counted in the log).
    """
    records = list(iter_records(name, content))
    if not records:
        raise DatasetError(name, None, None, "holds no records")
    examples: list[ChatExample] = []
    first = records[0][1]
    if isinstance(first, dict) and "conversations" in first:
        for rec in load_sharegpt(name, content):
            msgs = [m.as_dict() for m in rec.messages]
            # ShareGPT dumps may carry a system turn later on; the templates allow it only first.
            msgs = [m for i, m in enumerate(msgs) if m["role"] != "system" or i == 0]
            examples.append(ChatExample(rec.id, msgs, [], rec.line))
    else:
        for line, value in records:
            if not isinstance(value, dict):
                raise DatasetError(name, line, None, "must be a JSON object with 'messages' (or a ShareGPT record)")
            msgs = _messages(name, line, value.get("messages"), "messages")
            examples.append(ChatExample(str(value.get("id", f"record-{line}")), msgs, [], line))
    kept = []
    for ex in examples:
        ex.train_on = [i for i, m in enumerate(ex.messages) if m["role"] == "assistant" and m["content"].strip()]
        if ex.train_on:
            kept.append(ex)
    if not kept:
        raise DatasetError(name, None, None, "has no conversation with an assistant message to train on")
    if len(kept) < len(examples):
        log.info("skipped conversations without assistant text", extra={"file": name, "skipped": len(examples) - len(kept)})
    return kept


def load_asker_examples(name: str, content: str | bytes, loss_on: str = "last") -> list[ChatExample]:
    """Role-swapped asker rows ``{"id", "messages", "source"}``; the last message is the target user turn."""
    examples = []
    seen: dict[str, int] = {}
    for line, value in iter_jsonl(name, content):
        if not isinstance(value, dict):
            raise DatasetError(name, line, None, "must be a JSON object with 'id', 'messages' and 'source'")
        rid = value.get("id")
        if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
            raise DatasetError(name, line, "id", "must be a non-empty string or integer")
        rid = str(rid)
        if rid in seen:
            raise DatasetError(name, line, "id", f"{rid!r} is already used by the row on line {seen[rid]}")
        seen[rid] = line
        source = value.get("source", "")
        if not isinstance(source, str):
            raise DatasetError(name, line, "source", "must be a string")
        msgs = _messages(name, line, value.get("messages"), "messages")
        last = msgs[-1]
        if last["role"] != "assistant" or not last["content"].strip():
            raise DatasetError(name, line, f"messages[{len(msgs) - 1}]",
                               "the last message must be the target user turn, as a non-empty 'assistant' message "
                               "(role-swapped format)")
        if loss_on == "last":
            train_on = [len(msgs) - 1]
        else:
            train_on = [i for i, m in enumerate(msgs) if m["role"] == "assistant" and m["content"].strip()]
        examples.append(ChatExample(rid, msgs, train_on, line, source))
    if not examples:
        raise DatasetError(name, None, None, "holds no rows")
    return examples


def load_preference_pairs(name: str, content: str | bytes) -> list[PreferencePair]:
    """CaPO rows in TRL's conversational preference format (see the module docstring)."""
    from training.config import STRATEGIES

    pairs = []
    for line, value in iter_jsonl(name, content):
        if not isinstance(value, dict):
            raise DatasetError(name, line, None, "must be a JSON object with 'prompt', 'chosen', 'rejected', 'strategy'")
        prompt = _messages(name, line, value.get("prompt"), "prompt")
        if prompt[-1]["role"] != "user":
            raise DatasetError(name, line, f"prompt[{len(prompt) - 1}].role", "the prompt must end with a user message")
        answers = {}
        for key in ("chosen", "rejected"):
            msgs = _messages(name, line, value.get(key), key)
            if any(m["role"] != "assistant" for m in msgs) or not any(m["content"].strip() for m in msgs):
                raise DatasetError(name, line, key, "must be a list of assistant messages with text")
            answers[key] = msgs
        strategy = value.get("strategy")
        if strategy not in STRATEGIES:
            raise DatasetError(name, line, "strategy", f"is {strategy!r}; allowed: {', '.join(STRATEGIES)}")
        turn = value.get("turn", 0)
        if not isinstance(turn, int) or isinstance(turn, bool):
            raise DatasetError(name, line, "turn", "must be an integer")
        source_id = value.get("source_id", "")
        if not isinstance(source_id, (str, int)):
            raise DatasetError(name, line, "source_id", "must be a string or integer")
        extra = {"source_id": str(source_id), "turn": turn, "models": value.get("models")}
        pairs.append(PreferencePair(f"{source_id}:{turn}:{strategy}:{line}", prompt, answers["chosen"],
                                    answers["rejected"], strategy, line, extra))
    if not pairs:
        raise DatasetError(name, None, None, "holds no preference pairs")
    return pairs


# ----------------------------------------------------------------------------- label masks


def render(tokenizer: Any, messages: Sequence[dict[str, str]], *, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def message_spans(tokenizer: Any, messages: Sequence[dict[str, str]], train_on: Iterable[int]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each trained message (see module docstring)."""
    text = render(tokenizer, messages)
    spans = []
    for i in train_on:
        through = render(tokenizer, messages[: i + 1])
        if i:
            before = render(tokenizer, messages[:i], generation_prompt=True)
        else:  # nothing to render before a first message: its text ends the first rendering
            content = messages[0]["content"]
            at = through.rfind(content) if content else -1
            before = through[:at] if at >= 0 else through
        if not through.startswith(before) or not text.startswith(through):
            raise ConfigError(
                "the model's chat template is not prefix-stable (rendering a conversation does not start with the "
                "rendering of its first messages), so label masks cannot be derived from it; use a template such as "
                "ChatML")
        end = len(through.rstrip())
        spans.append((len(before), end))
    return text, spans


def tokenize_example(tokenizer: Any, example: ChatExample, max_length: int) -> dict[str, list[int]] | None:
    """``{"input_ids", "labels"}`` with labels only on the trained messages; None if truncation left none."""
    text, spans = message_spans(tokenizer, example.messages, example.train_on)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    for t, (start, _end) in enumerate(enc["offset_mapping"]):
        if any(s <= start < e for s, e in spans):
            labels[t] = ids[t]
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def tokenize_examples(tokenizer: Any, examples: Sequence[ChatExample], max_length: int) -> list[dict[str, list[int]]]:
    rows, dropped = [], 0
    for ex in examples:
        row = tokenize_example(tokenizer, ex, max_length)
        if row is None:
            dropped += 1
        else:
            rows.append(row)
    if dropped:
        log.warning("dropped sequences whose trained messages lie past max_length",
                    extra={"dropped": dropped, "max_length": max_length})
    if not rows:
        raise ConfigError(f"no sequence has a trained token within max_length={max_length}; raise --max-length")
    return rows
