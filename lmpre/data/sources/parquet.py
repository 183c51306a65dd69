"""Parquet files: one document per row, the text in one column, read in batches of rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lmpre.data.document import Document
from lmpre.data.sources.base import Source, WorkUnit, corrupt_file
from lmpre.errors import DataError

UNIT_BYTES = 64 * 2**20  # consecutive row groups are read by one worker until they hold this much (uncompressed)


class Parquet(Source):
    """Each row is a document: its `text_column`, with id `id_column` when set, else `FILE:ROW`.

    Files are read `batch_rows` rows at a time, so memory stays flat however large they are; their row groups
    are shared out among the workers. Null or blank texts are counted `skipped.empty`.
    """

    patterns = ("*.parquet",)

    def __init__(
        self,
        path: str | None = None,
        *,
        text_column: str = "text",
        id_column: str | None = None,
        batch_rows: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(path, **kwargs)
        self.text_column = text_column
        self.id_column = id_column
        self.batch_rows = batch_rows

    def check(self) -> None:
        super().check()
        check_batch_rows(self.batch_rows, self.setting)

    def work_units(self) -> list[WorkUnit]:
        return row_group_units(self.files(), self.setting)

    def read(self, unit: WorkUnit, stats: Counter[str]) -> Iterator[Document]:
        columns = {"text_column": self.text_column} | ({"id_column": self.id_column} if self.id_column else {})
        yield from read_rows(self, unit, stats, columns, self.batch_rows, Path(unit.path).name)


def check_batch_rows(batch_rows: int, setting: str) -> None:
    if batch_rows < 1:
        raise DataError(f"{setting}.batch_rows={batch_rows} must be at least 1.")


def row_group_units(files: list[Path], setting: str) -> list[WorkUnit]:
    """Work units of whole row groups (`start`, `end`: row group indices), so several workers share a big file.

    Reads only the files' footers."""
    units = []
    for path in files:
        with _open(path, setting) as file:
            metadata = file.metadata
        start, size = 0, 0
        for index in range(metadata.num_row_groups):
            size += metadata.row_group(index).total_byte_size
            if size >= UNIT_BYTES or index == metadata.num_row_groups - 1:
                units.append(WorkUnit(str(path), start, index + 1))
                start, size = index + 1, 0
    return units


def read_rows(
    source: Source,
    unit: WorkUnit,
    stats: Counter[str],
    columns: dict[str, str],
    batch_rows: int,
    name: str,
    split: str | None = None,
) -> Iterator[Document]:
    """The documents of `unit`'s row groups. `columns` maps the setting that names each column (`text_column`,
    then optionally the id column's) to the column; ids without an id column are `NAME:ROW`."""
    path = Path(unit.path)
    with _open(path, source.setting) as file:
        _check_columns(file.schema_arrow, columns, path, source.setting)
        metadata = file.metadata
        end = metadata.num_row_groups if unit.end is None else unit.end
        row = sum(metadata.row_group(index).num_rows for index in range(unit.start))
        try:
            batches = file.iter_batches(
                batch_size=batch_rows, row_groups=range(unit.start, end), columns=[*columns.values()]
            )
            for batch in batches:
                texts = batch.column(0).to_pylist()
                ids = batch.column(1).to_pylist() if batch.num_columns > 1 else [None] * len(texts)
                for offset, (text, id_value) in enumerate(zip(texts, ids, strict=True)):
                    if text is None or not text.strip():
                        stats["skipped.empty"] += 1
                        continue
                    id = f"{name}:{row + offset}" if id_value is None else str(id_value)
                    yield source.document(text, id, split)
                row += batch.num_rows
        except (pa.ArrowException, OSError) as err:
            raise corrupt_file(path, source.setting, err) from err


def _check_columns(schema: Any, columns: dict[str, str], path: Path, setting: str) -> None:
    """Every named column exists, and the first (the text) holds strings."""
    for key, column in columns.items():
        if column not in schema.names:
            raise DataError(
                f"{path} has no column {column!r} (its columns: {', '.join(schema.names)}): set {setting}.{key}=COLUMN."
            )
    text_key, text_column = next(iter(columns.items()))
    text_type = schema.field(text_column).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise DataError(f"{path}: column {text_column!r} holds {text_type}, not text: set {setting}.{text_key}=COLUMN.")


def _open(path: Path, setting: str) -> Any:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:  # not Parquet, or its footer is cut off
        raise corrupt_file(path, setting, err) from err
