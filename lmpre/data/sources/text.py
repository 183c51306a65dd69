"""Plain text files, one document per file (books, articles, a whole play)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from lmpre.data.corpora import bundled
from lmpre.data.document import Document
from lmpre.data.sources.base import Source, WorkUnit, find_files, read_compressed
from lmpre.errors import DataError

HOLDOUTS = ("hash", "tail")


class TextFiles(Source):
    """Each file is one document (`.txt`, plain or compressed).

    `holdout="hash"` holds whole files out by their hash; `holdout="tail"` cuts every file by characters:
    the first part is train, the last `val_fraction` val (then `test_fraction` test) — the classic split of a
    single long text such as Tiny Shakespeare. `bundled` names a corpus shipped with lmpre, read when `path`
    is not set.
    """

    patterns = ("*.txt", "*.txt.gz", "*.txt.bz2", "*.txt.xz", "*.txt.zst")

    def __init__(
        self, path: str | None = None, *, holdout: str = "hash", bundled: str | None = None, **kwargs: float | str
    ) -> None:
        super().__init__(path, **kwargs)  # type: ignore[arg-type]
        self.holdout = holdout
        self.bundled = bundled

    def check(self) -> None:
        super().check()
        if self.holdout not in HOLDOUTS:
            raise DataError(f"{self.setting}.holdout={self.holdout} is not one of {', '.join(HOLDOUTS)}.")

    def files(self) -> list[Path]:
        if self.path is None and self.bundled:
            return find_files(str(bundled(self.bundled)), self.patterns, self.setting)
        return super().files()

    def read(self, unit: WorkUnit, stats: Counter[str]) -> Iterator[Document]:
        path = Path(unit.path)
        text = self.decode(read_compressed(path, self.setting), str(path), stats).removeprefix("\ufeff")
        text = text.replace("\r\n", "\n")
        name = path.name
        if self.holdout == "hash":
            yield self.document(text, name)
            return
        val_start = round(len(text) * (1 - self.val_fraction - self.test_fraction))
        test_start = round(len(text) * (1 - self.test_fraction))
        for split, piece in (
            ("train", text[:val_start]),
            ("val", text[val_start:test_start]),
            ("test", text[test_start:]),
        ):
            if piece:
                yield self.document(piece, f"{name}:{split}", split)
