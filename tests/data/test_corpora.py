"""The corpora bundled with lmpre: the official files, byte for byte, and data=wiki's splits kept apart."""

import hashlib
import lzma
from pathlib import Path

from lmpre.data import TokenDataModule
from lmpre.data.corpora import CHECKSUMS, ROOT
from lmpre.data.curate import read_documents


def test_bundled_corpora_are_the_official_files_with_their_license() -> None:
    for name, sha256 in CHECKSUMS.items():
        path = ROOT / name
        assert hashlib.sha256(lzma.decompress(path.read_bytes())).hexdigest() == sha256, name
        assert "License" in (path.parent / "README.md").read_text()
    assert sum(path.stat().st_size for path in ROOT.glob("*/*.xz")) < 1.2e6  # well under 2 MB in the wheel


def test_wiki_splits_share_no_article(wiki_data: TokenDataModule) -> None:
    [stages] = [facts["documents_stages"] for facts in wiki_data.manifest["sources"].values()]
    titles = {
        split: [text.split("\n", 1)[0] for text in read_documents(Path(stages[split]), split)]
        for split in ("train", "val", "test")
    }
    assert len(titles["train"]) > 100
    assert len(titles["val"]) >= 3
    assert len(titles["test"]) >= 3
    assert all(title.startswith(" = ") for split in titles.values() for title in split)
    assert not set(titles["train"]) & set(titles["val"])
    assert not set(titles["train"]) & set(titles["test"])
    assert not set(titles["val"]) & set(titles["test"])
    assert sum(map(len, titles.values())) == 122  # every article of wiki.valid.raw and wiki.test.raw, once
