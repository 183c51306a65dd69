"""JSON Lines: one JSON object per line, the text in one of its fields (`.jsonl`, `.json`, plain or compressed)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lmpre.data.document import Document
from lmpre.data.sources.base import DECOMPRESSION_ERRORS, Source, WorkUnit, corrupt_file, open_binary
from lmpre.errors import DataError

BAD_RECORDS = ("fail", "skip")
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
UNIT_BYTES = 64 * 2**20  # an uncompressed file is cut into byte ranges of this size, read by separate workers
_MISSING = object()


class JsonLines(Source):
    """One document per line: the `text_field` of a JSON object (dotted for nested fields: `meta.text`).

    Ids are `id_field` when set, else `FILE@OFFSET` (the byte offset of the line: known without reading the
    file from its start, as the workers of a cut file do). A line that is not JSON or lacks a field fails the
    run, naming file and line, unless `on_bad_record="skip"`: then it is counted (`skipped.bad_json`,
    `skipped.missing_field`, `skipped.not_text`). Empty texts are counted `skipped.empty`.
    """

    patterns = tuple(f"*.{kind}{suffix}" for kind in ("jsonl", "json") for suffix in ("", *COMPRESSED))

    def __init__(
        self,
        path: str | None = None,
        *,
        text_field: str = "text",
        id_field: str | None = None,
        on_bad_record: str = "fail",
        **kwargs: Any,
    ) -> None:
        super().__init__(path, **kwargs)
        self.text_field = text_field
        self.id_field = id_field
        self.on_bad_record = on_bad_record

    def check(self) -> None:
        super().check()
        if self.on_bad_record not in BAD_RECORDS:
            raise DataError(
                f"{self.setting}.on_bad_record={self.on_bad_record} is not one of {', '.join(BAD_RECORDS)}."
            )
        if not self.text_field:
            raise DataError(f"{self.setting}.text_field is empty: name the field that holds the text.")

    def work_units(self) -> list[WorkUnit]:
        """Uncompressed files are cut into byte ranges (no I/O: a reader starts at the first line that begins in
        its range); a compressed stream cannot be entered midway, so it is one unit."""
        units = []
        for path in self.files():
            size = path.stat().st_size
            if path.suffix.lower() in COMPRESSED or size <= UNIT_BYTES:
                units.append(WorkUnit(str(path)))
                continue
            starts = range(0, size, UNIT_BYTES)
            units += [
                WorkUnit(str(path), start, start + UNIT_BYTES if start + UNIT_BYTES < size else None)
                for start in starts
            ]
        return units

    def read(self, unit: WorkUnit, stats: Counter[str]) -> Iterator[Document]:
        path = Path(unit.path)
        try:
            with open_binary(path) as file:
                offset = _first_line_at(file, unit.start)
                for line in file:
                    if unit.end is not None and offset >= unit.end:
                        break
                    try:
                        document = self._document(line, path, offset, stats)
                    except _BadRecord as bad:
                        self._skip_or_fail(bad, path, offset, stats)
                        document = None
                    if document is not None:
                        yield document
                    offset += len(line)
        except DECOMPRESSION_ERRORS as err:
            raise corrupt_file(path, self.setting, err) from err

    def _document(self, line: bytes, path: Path, offset: int, stats: Counter[str]) -> Document | None:
        if not line.strip():
            return None  # blank lines between records carry nothing
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:  # the rare case: the line number is worth counting lines for
            text = self.decode(line, _where(path, offset), stats)
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise _BadRecord("bad_json", f"not valid JSON ({err.msg}, column {err.colno})", key=None) from err
        value = _field(record, self.text_field)
        if value is _MISSING:
            raise _BadRecord("missing_field", _missing(record, self.text_field))
        if value is None or (isinstance(value, str) and not value.strip()):
            stats["skipped.empty"] += 1
            return None
        if not isinstance(value, str):
            raise _BadRecord("not_text", f"field {self.text_field!r} holds a {type(value).__name__}, not text")
        if self.id_field is None:
            return self.document(value, f"{path.name}@{offset}")
        id_value = _field(record, self.id_field)
        if id_value is _MISSING:
            raise _BadRecord("missing_field", _missing(record, self.id_field), key="id_field")
        return self.document(value, str(id_value))

    def _skip_or_fail(self, bad: _BadRecord, path: Path, offset: int, stats: Counter[str]) -> None:
        """Count the record as skipped, or fail naming the file, the line and the settings that would help."""
        if self.on_bad_record == "skip":
            stats[f"skipped.{bad.reason}"] += 1
            return
        field_fix = f"set {self.setting}.{bad.key}=FIELD to read another field, " if bad.key else ""
        raise DataError(
            f"{_where(path, offset)}: {bad.problem}. Fix the file, {field_fix}or set "
            f"{self.setting}.on_bad_record=skip to skip such lines (they are counted)."
        )


class _BadRecord(Exception):
    """A line that `on_bad_record` decides about: `reason` counts it, `key` names the setting that may fix it."""

    def __init__(self, reason: str, problem: str, key: str | None = "text_field") -> None:
        super().__init__(problem)
        self.reason, self.problem, self.key = reason, problem, key


def _first_line_at(file: IO[bytes], start: int) -> int:
    """Position `file` at the first line that begins at or after byte `start`; returns that offset."""
    if start == 0:
        return 0
    file.seek(start - 1)
    file.readline()  # the rest of the line that holds byte start - 1 (just its newline if one ends there)
    return file.tell()


def _field(record: object, field: str) -> object:
    """`record[field]`, following dots into nested objects (`meta.text`); `_MISSING` when absent."""
    if isinstance(record, dict) and field in record:
        return record[field]
    value = record
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _missing(record: object, field: str) -> str:
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object with a field {field!r}"
    return f"no field {field!r} (fields: {', '.join(record) or 'none'})"


def _where(path: Path, offset: int) -> str:
    """`PATH line N`, counting the lines before `offset`: paid only when something is wrong."""
    newlines = 0
    with open_binary(path) as file:
        while offset > 0:
            chunk = file.read(min(offset, 2**20))
            if not chunk:
                break
            newlines += chunk.count(b"\n")
            offset -= len(chunk)
    return f"{path} line {newlines + 1}"
