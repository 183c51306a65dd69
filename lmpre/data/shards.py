"""Documents -> one packed stream of token ids, written as litdata chunks that TokensLoader reads as windows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import compress, islice
from pathlib import Path

import numpy as np
from litdata import TokensLoader
from litdata.streaming.writer import BinaryWriter
from litdata.utilities.env import _DistributedEnv
from tokenizers import Tokenizer

from lmpre.data.tokenizer import special_token_ids

# Tokens per chunk. TokensLoader cuts non-overlapping windows inside each chunk and drops the chunk's tail,
# so every chunk loses fewer than `window` tokens: under 0.05% for windows up to 1024.
CHUNK_TOKENS = 2**21
ENCODE_BATCH = 512  # documents per encode_batch call: the tokenizer spreads each batch over every core


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id: uint16 halves disk and page cache for vocabularies up to 65536."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)


def write_token_shards(
    texts: Iterable[str], keep: Iterable[bool], out_dir: Path, tokenizer: Tokenizer
) -> dict[str, int]:
    """Tokenize the kept `texts` in order, each ended by <|endoftext|>, into litdata chunks under `out_dir`;
    returns the documents, UTF-8 bytes (the denominator of bits per byte) and tokens written."""
    out_dir.mkdir(parents=True)
    eot = special_token_ids(tokenizer)["eot"]
    dtype = token_dtype(tokenizer.get_vocab_size())
    writer = BinaryWriter(str(out_dir), chunk_size=CHUNK_TOKENS, item_loader=TokensLoader())
    # One writer in one process, even when DDP ranks exist (prepare_data runs on one of them): otherwise the
    # writer takes the process group's world size and waits forever for the other ranks' index files.
    writer._distributed_env = _DistributedEnv(world_size=1, global_rank=0, num_nodes=1)
    index = num_bytes = 0
    for batch in _batched(compress(texts, keep), ENCODE_BATCH):
        num_bytes += sum(len(text.encode()) for text in batch)
        for encoding in tokenizer.encode_batch_fast(batch, add_special_tokens=False):
            writer.add_item(index, np.array([*encoding.ids, eot], dtype=dtype))
            index += 1
    if index == 0:
        return {"documents": 0, "bytes": 0, "tokens": 0}
    writer.done()
    writer.merge(1)
    chunks = json.loads((out_dir / "index.json").read_text())["chunks"]
    return {"documents": index, "bytes": num_bytes, "tokens": sum(int(chunk["dim"]) for chunk in chunks)}


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
