"""Documents -> one packed stream of token ids, written as litdata chunks that TokensLoader reads as windows."""

import contextlib
import json
import multiprocessing
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
from litdata import TokensLoader, optimize
from tokenizers import Tokenizer

from lmpre.data.documents import TextSpan, read_documents
from lmpre.data.tokenizer import special_token_ids

# Tokens per chunk. TokensLoader cuts non-overlapping windows inside each chunk and drops the chunk's tail,
# so every chunk loses fewer than `window` tokens: under 0.05% for windows up to 1024.
CHUNK_TOKENS = 2**21


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id: uint16 halves disk and page cache for vocabularies up to 65536."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)


def tokenize_span(span: TextSpan, tokenizer_file: str, format: str, dtype: str) -> Iterator[np.ndarray]:
    """Yield each document of `span` as token ids followed by end-of-text (runs in litdata's worker process)."""
    tokenizer = Tokenizer.from_file(tokenizer_file)
    eot = special_token_ids(tokenizer)["eot"]
    documents = list(read_documents(span, format))
    for encoding in tokenizer.encode_batch_fast(documents, add_special_tokens=False):
        yield np.array([*encoding.ids, eot], dtype=dtype)


def write_token_shards(spans: list[TextSpan], out_dir: Path, tokenizer_file: Path, format: str, dtype: np.dtype) -> int:
    """Tokenize `spans` in order into litdata chunks under `out_dir`; returns the number of tokens written."""
    fn = partial(tokenize_span, tokenizer_file=str(tokenizer_file), format=format, dtype=dtype.name)
    with _process_state_restored():
        # Workers fork from a server that imports this module (litdata, torch) once per process: later calls
        # start in a fraction of a second, where spawn pays ~2 s of imports each time. Unlike plain fork, the
        # server never ran the tokenizer, so workers keep its thread pool.
        multiprocessing.set_forkserver_preload(["__main__", __name__])
        optimize(
            fn=fn,
            inputs=spans,
            output_dir=str(out_dir),
            chunk_size=CHUNK_TOKENS,
            item_loader=TokensLoader(),
            # One worker keeps the input order (it takes items from a FIFO queue), and the tokenizer already
            # runs on every core. keep_data_ordered=True would also start a file-remover process per worker:
            # ~1.5 s more per call for nothing, since the inputs are byte ranges, not files to delete.
            num_workers=1,
            start_method="forkserver",
            verbose=False,
        )
    chunks = json.loads((out_dir / "index.json").read_text())["chunks"]
    return sum(chunk["dim"] for chunk in chunks)


@contextlib.contextmanager
def _process_state_restored() -> Iterator[None]:
    """Undo what `optimize` changes for the whole process: the multiprocessing start method, and a SIGINT
    handler that calls os._exit(0), which would turn a later Ctrl-C during training into a silent success."""
    start_method = multiprocessing.get_start_method(allow_none=True)
    sigint_handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        multiprocessing.set_start_method(start_method, force=True)
        signal.signal(signal.SIGINT, sigint_handler)
