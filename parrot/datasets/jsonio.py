"""JSON / JSONL input and output for the dataset loaders, and ``DatasetError``, which they raise.

Every loader in :mod:`parrot.datasets` takes a display ``name`` (a file name or an object-store
key, used only in messages) and the content as ``str`` or ``bytes``, so a caller can load from a
path, an upload or object-store bytes alike. Problems are reported as ``DatasetError`` naming the
source, the 1-based line where the offending record starts and the field inside it, for example::
    questions.jsonl:7: field 'turns': expected a non-empty list of strings

Records in a JSON array file get the line where the record starts as well; ``line`` is None only
for problems with the file as a whole (undecodable bytes, no records, an array that is not closed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from parrot.errors import InvalidArgument, clip

_DECODER = json.JSONDecoder()
_WS = " \t\r\n"


class DatasetError(InvalidArgument, ValueError):
    """A data file could not be read or holds a malformed record.

    A ``ValueError`` for plain Python callers and an ``InvalidArgument`` (gRPC INVALID_ARGUMENT)
    when it escapes an RPC, since the data always comes from the caller.
    """

    def __init__(self, file: str, line: int | None, field: str | None, problem: str):
        self.file = clip(file, 300)
        self.line = line
        self.field = clip(field, 200) if field else field
        self.problem = clip(problem)
        where = self.file if line is None else f"{self.file}:{line}"
        what = f"field {self.field!r}: " if self.field else ""
        # Skip InvalidArgument.__init__: our message has its own layout.
        Exception.__init__(self, f"{where}: {what}{self.problem}")


def decode_text(name: str, content: str | bytes) -> str:
    """The content as text: bytes are decoded as UTF-8 (a leading BOM is dropped)."""
    if isinstance(content, str):
        return content[1:] if content.startswith("\ufeff") else content
    try:
        return bytes(content).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(name, None, None, f"is not valid UTF-8 (byte {e.start})") from e


def read_file(path: str | Path) -> tuple[str, str]:
    """(display name, text) of a local file; unreadable files raise ``DatasetError``."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DatasetError(str(p), None, None, f"cannot be read: {e.strerror or e}") from e
    return str(p), decode_text(str(p), data)


def iter_jsonl(name: str, content: str | bytes) -> Iterator[tuple[int, Any]]:
    """Yields (line number, parsed value) for each non-blank line of a JSONL text."""
    text = decode_text(name, content)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(name, lineno, None, f"is not valid JSON ({e.msg} at column {e.colno})") from e
        yield lineno, value


def iter_json_array(name: str, content: str | bytes) -> Iterator[tuple[int, Any]]:
    """Yields (line where the element starts, parsed element) for a JSON array text.

    Elements are decoded one at a time, so a malformed element is reported at its own line.
    """
    text = decode_text(name, content)
    lines = _LineCounter(text)
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise DatasetError(name, None, None, "is not a JSON array (expected '[')")
    pos = _skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        _expect_end(name, text, pos + 1, lines)
        return
    while True:
        if pos >= len(text):
            raise DatasetError(name, None, None, "ends before the JSON array is closed")
        line = lines.at(pos)
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DatasetError(name, e.lineno, None, f"is not valid JSON ({e.msg} at column {e.colno})") from e
        yield line, value
        pos = _skip_ws(text, pos)
        if pos >= len(text):
            raise DatasetError(name, None, None, "ends before the JSON array is closed")
        if text[pos] == "]":
            _expect_end(name, text, pos + 1, lines)
            return
        if text[pos] != ",":
            raise DatasetError(name, lines.at(pos), None, f"expected ',' or ']' between array elements, found {text[pos]!r}")
        pos = _skip_ws(text, pos + 1)


def iter_records(name: str, content: str | bytes) -> Iterator[tuple[int, Any]]:
    """JSON array or JSONL, detected by the first non-space character ('[' means an array)."""
    text = decode_text(name, content)
    if text.lstrip(_WS).startswith("["):
        return iter_json_array(name, text)
    return iter_jsonl(name, text)


def dumps_jsonl(records: Any) -> str:
    """Records as JSONL text (UTF-8 kept as is, one record a line, trailing newline)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _expect_end(name: str, text: str, pos: int, lines: "_LineCounter") -> None:
    pos = _skip_ws(text, pos)
    if pos < len(text):
        raise DatasetError(name, lines.at(pos), None, "has extra content after the JSON array")


class _LineCounter:
    """1-based line numbers of increasing offsets in a text, counted incrementally (linear overall)."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._line = 1

    def at(self, pos: int) -> int:
        if pos < self._pos:
            self._pos, self._line = 0, 1
        self._line += self._text.count("\n", self._pos, pos)
        self._pos = pos
        return self._line
