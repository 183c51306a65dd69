import json
from pathlib import Path

import numpy as np
import pytest
from litdata import StreamingDataset, TokensLoader
from tokenizers import Tokenizer

from lmpre.data import DataConfig, prepare_dataset
from lmpre.data import pipeline as pipeline_module
from lmpre.data import shards as shards_module
from lmpre.data.documents import read_documents, split_spans
from lmpre.data.pipeline import TOKENIZER


def encoded_stream(prepared: Path, raw: Path) -> np.ndarray:
    """The token stream the shards should hold: every document of `raw`, in order, each ended by end-of-text."""
    tokenizer = Tokenizer.from_file(str(prepared / TOKENIZER))
    documents = [doc for span in split_spans(raw, "wikitext", 2**30) for doc in read_documents(span, "wikitext")]
    return np.concatenate([[*encoding.ids, 0] for encoding in tokenizer.encode_batch(documents)])


def test_shards_hold_every_document_then_end_of_text(prepared_wikitext: Path, wikitext_config: DataConfig) -> None:
    expected = encoded_stream(prepared_wikitext, Path(wikitext_config.source) / "wiki.valid.raw")
    window = 1000
    dataset = StreamingDataset(str(prepared_wikitext / "val"), item_loader=TokensLoader(block_size=window))
    stream = np.concatenate([dataset[i] for i in range(len(dataset))])
    assert dataset[0].dtype == np.uint16
    assert len(dataset) == len(expected) // window  # one chunk: only its tail (< window) is not read
    np.testing.assert_array_equal(stream, expected[: len(stream)])


def test_windows_stay_inside_chunks_and_each_chunk_drops_its_tail(
    small_config: DataConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module, "SPAN_BYTES", 20_000)  # several tokenization tasks, in order
    monkeypatch.setattr(shards_module, "CHUNK_TOKENS", 5_000)  # several chunks
    prepared = prepare_dataset(small_config, cache_dir=tmp_path / "cache")
    expected = encoded_stream(prepared, Path(small_config.source) / "train.raw")
    dims = [chunk["dim"] for chunk in json.loads((prepared / "train" / "index.json").read_text())["chunks"]]
    assert len(dims) > 1
    assert sum(dims) == len(expected)

    window = 300
    starts = np.cumsum([0, *dims[:-1]])
    windows = [
        expected[start + i * window :][:window]
        for start, dim in zip(starts, dims, strict=True)
        for i in range(dim // window)
    ]
    dataset = StreamingDataset(str(prepared / "train"), item_loader=TokensLoader(block_size=window))
    assert len(dataset) == len(windows)
    for i, want in enumerate(windows):
        np.testing.assert_array_equal(dataset[i], want)
