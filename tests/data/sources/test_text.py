from collections import Counter
from pathlib import Path

import pytest

from lmpre.data.corpora import bundled
from lmpre.data.sources.base import open_binary
from lmpre.data.sources.text import TextFiles
from lmpre.errors import DataError


def read_all(source: TextFiles) -> list:
    return [doc for unit in source.work_units() for doc in source.read(unit, Counter())]


def test_one_document_per_file_without_bom_or_crlf(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_bytes("\ufeffTitle\r\n\r\nBody\r\n".encode())
    (tmp_path / "a.txt").write_text("First book")
    (tmp_path / "notes.md").write_text("not a .txt file")
    docs = read_all(TextFiles(str(tmp_path)))
    assert [(doc.id, doc.text, doc.split) for doc in docs] == [
        ("a.txt", "First book", None),
        ("b.txt", "Title\n\nBody\n", None),
    ]


def test_tail_holdout_cuts_by_characters_like_nanogpt() -> None:
    text = open_binary(bundled("tinyshakespeare") / "input.txt.xz").read().decode()
    docs = read_all(TextFiles(bundled="tinyshakespeare", holdout="tail", val_fraction=0.1, test_fraction=0.0))
    cut = round(len(text) * 0.9)
    assert [(doc.split, doc.text) for doc in docs] == [("train", text[:cut]), ("val", text[cut:])]


def test_missing_path_and_bad_settings_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist: pass data\.source=PATH"):
        TextFiles(str(tmp_path / "nowhere")).files()
    with pytest.raises(DataError, match=r"holds no \*\.txt"):
        TextFiles(str(tmp_path)).files()
    with pytest.raises(DataError, match=r"data\.sources\.textfiles\.holdout=middle"):
        TextFiles(str(tmp_path), holdout="middle").check()
    with pytest.raises(DataError, match=r"val_fraction=1\.5"):
        TextFiles(str(tmp_path), val_fraction=1.5).check()
