from dataclasses import replace
from pathlib import Path

import pytest

from lmpre.data import DataConfig


@pytest.fixture
def small_config(shared_data: Path, tmp_path: Path, wikitext_config: DataConfig) -> DataConfig:
    """Three WikiText-2 articles for train and two for val, in a writable directory: for tests that build often."""
    lines = (shared_data / "wikitext-2-raw" / "wiki.valid.raw").read_text().splitlines(keepends=True)
    titles = [i for i, line in enumerate(lines) if line.startswith(" = ") and not line.startswith(" = =")]
    source = tmp_path / "source"
    source.mkdir()
    (source / "train.raw").write_text("".join(lines[: titles[3]]))
    (source / "valid.raw").write_text("".join(lines[titles[3] : titles[5]]))
    return replace(wikitext_config, source=str(source), splits={"train": "train.raw", "val": "valid.raw"})
