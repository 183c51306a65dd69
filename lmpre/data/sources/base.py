"""What every kind of source shares: one small interface (files, work units, documents out) and how files are
found, opened (plain or compressed) and decoded.

A new kind of source is one module with a `Source` subclass that implements `read`, plus a `conf/source/` file.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import lzma
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from lmpre.data.document import Document
from lmpre.errors import DataError

ENCODING_ERRORS = ("strict", "replace")
# What a damaged compressed stream raises: gzip/bz2 OSError or EOFError, xz LZMAError, zstd ZstdError.
DECOMPRESSION_ERRORS = (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError)


@dataclass(frozen=True)
class WorkUnit:
    """A piece of a source that one worker process reads on its own: a whole file, or a range of it (bytes for
    text, row groups for Parquet). `end=None` means to the end."""

    path: str
    start: int = 0
    end: int | None = None


class Source(ABC):
    """A corpus: the local files it reads and how they become documents, in order, streamed.

    Constructors do no I/O: Hydra builds sources before the run's settings are checked, and `data.source=PATH`
    may still replace `path`. Files are found (or downloaded) in `files()`, read in `read()`.
    """

    # File patterns looked for when `path` is a directory; subclasses name their own.
    patterns: Sequence[str] = ("*",)

    def __init__(
        self,
        path: str | None = None,
        *,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        weight: float = 1.0,
        encoding_errors: str = "strict",
    ) -> None:
        self.path = path
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.weight = weight
        self.encoding_errors = encoding_errors
        self.name = type(self).__name__.lower()  # its key in data.sources, set by the datamodule

    @property
    def setting(self) -> str:
        """The config key of this source, for error messages."""
        return f"data.sources.{self.name}"

    def check(self) -> None:
        """Raise a DataError naming the setting when the configuration cannot work (before any expensive work)."""
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1 - self.val_fraction:
            raise DataError(
                f"{self.setting}.val_fraction={self.val_fraction} and .test_fraction={self.test_fraction} must be "
                "fractions in [0, 1) that leave some documents for train."
            )
        if self.weight <= 0:
            raise DataError(f"{self.setting}.weight={self.weight} must be positive.")
        if self.encoding_errors not in ENCODING_ERRORS:
            raise DataError(
                f"{self.setting}.encoding_errors={self.encoding_errors} is not one of {', '.join(ENCODING_ERRORS)}."
            )

    def settings(self) -> dict[str, Any]:
        """Everything besides file contents that decides the documents: the reuse key of this source.

        `weight` is left out: a mixture's weights are applied when training reads, so changing them rebuilds
        nothing."""
        public = {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in ("weight", "name")}
        return {"kind": f"{type(self).__module__}.{type(self).__qualname__}", **public}

    def files(self) -> list[Path]:
        """The local files this source reads, sorted; their content decides whether prepared data is reused."""
        return find_files(self.path, self.patterns, self.setting)

    def split_files(self) -> dict[str, list[Path]]:
        """The files of each split when the files say it (each split is then prepared apart, so a changed test file
        leaves train's work alone); otherwise every file under the key "" (the split decided per document)."""
        return {"": self.files()}

    def work_units(self) -> list[WorkUnit]:
        """How the reading is cut for worker processes: one unit per file unless a subclass cuts finer."""
        return [WorkUnit(str(path)) for path in self.files()]

    @abstractmethod
    def read(self, unit: WorkUnit, stats: Counter[str]) -> Iterator[Document]:
        """The documents of `unit`, in order. Skipped input is counted in `stats` under a named reason
        (e.g. `skipped.redirect`), so the cleaning report shows it; bad input that cannot be skipped raises a
        DataError naming the file, the line and the setting to change."""

    def clean(self, document: Document) -> Document | str:
        """Turn what `read` yielded into plain text, or say why the document is dropped (e.g. `redirect`).

        Runs in the worker processes, in parallel, before the filters: costly conversions (wiki markup) go here
        rather than in `read`, which may run in one process per file."""
        return document

    def decode(self, data: bytes, where: str, stats: Counter[str]) -> str:
        """UTF-8 text of `data`, by the `encoding_errors` policy; replaced bytes are counted either way."""
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            if self.encoding_errors == "strict":
                raise DataError(
                    f"{where} is not valid UTF-8 (byte {err.start}: {err.reason}): convert it, leave it out, or set "
                    f"{self.setting}.encoding_errors=replace to replace invalid bytes."
                ) from err
        text = data.decode("utf-8", "replace")
        stats["replaced.invalid_utf8"] += text.count("\ufffd") - data.count("\ufffd".encode())
        return text

    def document(self, text: str, id: str, split: str | None = None, **metadata: Any) -> Document:
        return Document(text=text, id=id, source=self.name, split=split, metadata=metadata)


def find_files(path: str | None, patterns: Sequence[str], setting: str) -> list[Path]:
    """Files of a source: `path` is a file, a directory (searched for `patterns`, recursively) or a glob."""
    if not path:
        raise DataError(f"{setting}.path is not set: pass data.source=PATH with the file or directory to read.")
    expanded = Path(path).expanduser()
    if glob.has_magic(str(expanded)):
        matches = sorted(Path(p) for p in glob.glob(str(expanded), recursive=True) if Path(p).is_file())  # noqa: PTH207
        if not matches:
            raise DataError(f"No file matches {path}: check data.source / {setting}.path.")
        return matches
    if expanded.is_file():
        return [expanded.resolve()]
    if expanded.is_dir():
        matches = sorted({p.resolve() for pattern in patterns for p in expanded.rglob(pattern) if p.is_file()})
        if not matches:
            raise DataError(
                f"{path} holds no {' or '.join(patterns)} files: check data.source / {setting}.path, "
                "or choose the data config for that kind of file."
            )
        return matches
    raise DataError(f"{path} does not exist: pass data.source=PATH with an existing file or directory.")


def open_binary(path: Path) -> IO[bytes]:
    """Open plain, .gz, .bz2, .xz or .zst files alike, streamed."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    if suffix == ".zst":
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(path.open("rb"), closefd=True))
    return path.open("rb")


def read_compressed(path: Path, setting: str) -> bytes:
    """The whole (decompressed) content of a file; a corrupt archive is a DataError naming it."""
    try:
        with open_binary(path) as file:
            return file.read()
    except DECOMPRESSION_ERRORS as err:
        raise corrupt_file(path, setting, err) from err


def corrupt_file(path: Path, setting: str, err: BaseException) -> DataError:
    return DataError(
        f"{path} cannot be read ({type(err).__name__}: {err}): it is truncated or corrupt. Download it again, "
        f"or leave it out of {setting}.path."
    )
