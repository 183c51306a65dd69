"""Scoring a trained objective on every window of a token stream: summed cross-entropy, scored tokens and correct
predictions, with seeded corruption so the same command gives the same numbers. `lmpre.evaluate` wires it to a
checkpoint, a prepared split and raw text files.

Three ways to cut tokens into windows:
- a prepared split: the windows training validates on, all of them (its loader drops a last, incomplete batch);
- a raw text file: one document, as in the prepared data (ended by <|endoftext|>; for the causal LM also started by
  one, the previous document's end), cut into consecutive windows so that every token is scored once;
- blocks (causal LM): a stream cut into non-overlapping blocks of `block` tokens, block i predicting the `block`
  tokens after its start, each from the tokens of block i before it (nanoGPT's character-level val metric).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lmpre.errors import CheckpointError, DataError
from lmpre.objectives import IGNORE_INDEX, CausalLM, PretrainingObjective

CHAR_BLOCK = 64  # the character-level metric's context (issue 10: nanoGPT's Tiny Shakespeare benchmark)


@dataclass
class Scores:
    """Sums over scored tokens; the metrics are ratios of them, so scores of parts add up exactly."""

    windows: int = 0
    tokens: int = 0  # scored (target) tokens
    nats: float = 0.0  # summed cross-entropy
    correct: int = 0  # targets that are the argmax of their logits

    def add(self, other: Scores) -> None:
        self.windows += other.windows
        self.tokens += other.tokens
        self.nats += other.nats
        self.correct += other.correct

    @property
    def loss(self) -> float:
        """Mean cross-entropy in nats per scored token."""
        return self.nats / self.tokens if self.tokens else math.nan

    def metrics(self, text_bytes: float | None = None) -> dict[str, float | int]:
        """windows, tokens, loss, ppl, acc; and bits per byte when the UTF-8 bytes behind the tokens are given."""
        found: dict[str, float | int] = {
            "windows": self.windows,
            "tokens": self.tokens,
            "loss": self.loss,
            "ppl": math.exp(min(self.loss, 700.0)),
            "acc": self.correct / self.tokens if self.tokens else math.nan,
        }
        if text_bytes:
            found["bpb"] = self.nats / math.log(2) / text_bytes
        return found


def corruption_generator(seed: int, name: str, batch_index: int, device: torch.device) -> torch.Generator:
    """The generator of one batch's random corruption (masking, spans): fixed by (seed, what is scored, batch), so
    an evaluation repeats exactly on the same device and batch size."""
    key = f"{seed}/{name}/{batch_index}".encode()
    return torch.Generator(device=device).manual_seed(zlib.crc32(key))


@torch.inference_mode()
def score_batch(objective: PretrainingObjective, window: Tensor, generator: torch.Generator) -> list[Scores]:
    """The scores of each window (row) of a batch, through the objective's own `forward`."""
    prediction = objective(window, generator)
    logits, targets = prediction.logits.float(), prediction.targets
    nats = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    scored = targets != IGNORE_INDEX
    correct = (logits.argmax(-1) == targets) & scored
    rows = zip(nats.double().sum(1).tolist(), scored.sum(1).tolist(), correct.sum(1).tolist(), strict=True)
    return [Scores(1, int(tokens), float(total), int(right)) for total, tokens, right in rows]


def score_batches(
    objective: PretrainingObjective,
    batches: Iterable[tuple[Tensor, Sequence[str]]],
    *,
    seed: int,
    name: str,
    device: torch.device,
) -> dict[str, Scores]:
    """Scores per group over batches of (windows, the group of each window), e.g. a mixture's sources."""
    found: dict[str, Scores] = {}
    for index, (window, groups) in enumerate(batches):
        window = window.to(device)
        generator = corruption_generator(seed, name, index, device)
        for group, scores in zip(groups, score_batch(objective, window, generator), strict=True):
            found.setdefault(group, Scores()).add(scores)
    return found


def score_windows(
    objective: PretrainingObjective,
    windows: Sequence[Tensor],
    *,
    batch_size: int,
    seed: int,
    name: str,
    device: torch.device,
) -> Scores:
    """Windows of any lengths, batched in order: consecutive windows of equal length share a batch."""
    total = Scores()
    for scores in score_batches(
        objective, ((w, [""] * len(w)) for w in _batched(windows, batch_size)), seed=seed, name=name, device=device
    ).values():
        total.add(scores)
    return total


def _batched(windows: Sequence[Tensor], batch_size: int) -> Iterator[Tensor]:
    batch: list[Tensor] = []
    for window in windows:
        if batch and (len(batch) == batch_size or len(window) != len(batch[0])):
            yield torch.stack(batch)
            batch = []
        batch.append(window)
    if batch:
        yield torch.stack(batch)


# ------------------------------------------------------------------------------------------------ cutting a stream


def block_windows(tokens: Tensor, block: int, *, partial: bool) -> list[Tensor]:
    """Windows of `block + 1` tokens starting every `block` tokens: block i predicts tokens block·i+1 …
    block·i+block, each from the tokens of block i before it, so every token but the first is a target once.
    `partial`: a last, shorter window scores the tokens left over (else they are not scored)."""
    windows = [tokens[start : start + block + 1] for start in range(0, len(tokens) - 1, block)]
    if windows and not partial and len(windows[-1]) < block + 1:
        windows.pop()
    return windows


def consecutive_windows(tokens: Tensor, window: int) -> list[Tensor]:
    """Non-overlapping windows of `window` tokens; a last, shorter one if it holds at least 2 tokens."""
    windows = [tokens[start : start + window] for start in range(0, len(tokens), window)]
    if windows and len(windows[-1]) < 2:
        windows.pop()
    return windows


def document_windows(objective: PretrainingObjective, ids: Sequence[int], seq_len: int) -> list[Tensor]:
    """The windows that score one document (its token ids), as the prepared data holds it: ended by <|endoftext|>;
    for the causal LM also started by one (the previous document's end), so that every token of it and its end are
    predicted once, from at most `seq_len` tokens before them."""
    eot = int(objective.special_token("eot"))
    if isinstance(objective, CausalLM):
        return block_windows(torch.tensor([eot, *ids, eot]), seq_len, partial=True)
    return consecutive_windows(torch.tensor([*ids, eot]), objective.window_length(seq_len))


def score_document(
    objective: PretrainingObjective,
    ids: Sequence[int],
    seq_len: int,
    *,
    batch_size: int,
    seed: int = 0,
    device: torch.device | None = None,
) -> Scores:
    """One document's scores (`document_windows`); the noise is drawn as for any text, so equal texts score equally."""
    windows = document_windows(objective, ids, seq_len)
    device = objective.device if device is None else device
    return score_windows(objective, windows, batch_size=batch_size, seed=seed, name="text", device=device)


def score_blocks(
    objective: PretrainingObjective,
    stream: np.ndarray | Tensor,
    block: int = CHAR_BLOCK,
    *,
    batch_size: int = 64,
    device: torch.device | None = None,
) -> Scores:
    """A causal LM on a token stream cut into non-overlapping blocks (`block_windows`, complete blocks only), a
    trailing <|endoftext|> left out. With one token per character, `.loss` is issue 10's metric: nats per character
    over the val split cut into blocks of 64 (`split_tokens` gives the split's stream)."""
    if not isinstance(objective, CausalLM):
        raise TypeError(f"blocks are scored by a causal LM, not a {type(objective).__name__}")
    tokens = torch.as_tensor(np.asarray(stream, dtype=np.int64))
    if len(tokens) and int(tokens[-1]) == int(objective.special_token("eot")):  # the last document's end
        tokens = tokens[:-1]
    windows = block_windows(tokens, block, partial=False)
    device = objective.device if device is None else device
    return score_windows(objective, windows, batch_size=batch_size, seed=0, name="blocks", device=device)


# ------------------------------------------------------------------------------------------------ prepared data


def check_tokenizer(checkpoint: Path, record: Mapping[str, Any], manifest: Mapping[str, Any], data: str) -> None:
    """Refuse data prepared with another tokenizer than the checkpoint's: its token ids mean other text."""
    expected, found = record.get("tokenizer_sha256"), manifest["tokenizer"]["sha256"]
    if expected is None:
        raise CheckpointError(f"{checkpoint} records no tokenizer (made before lmpre recorded one): cannot check data")
    if expected != found:
        tokenizer = checkpoint.parent / "tokenizer.json"
        raise DataError(
            f"{data} was prepared with another tokenizer (sha256 {found[:12]}…) than {checkpoint} was trained with "
            f"({expected[:12]}…): evaluate on the run's data (leave data= unset), or prepare this data with the "
            f"checkpoint's tokenizer: data.tokenizer.kind=file data.tokenizer.path={tokenizer}"
        )


def split_chunks(prepared_dir: Path, manifest: Mapping[str, Any], split: str) -> Iterator[tuple[str, np.ndarray]]:
    """(source, tokens) of each litdata chunk of a prepared split, in order, memory-mapped: a chunk is a header of
    (items + 2) uint32 followed by the tokens, as litdata's TokensLoader reads it."""
    dtype = np.dtype(manifest["dtype"])
    for name, facts in manifest["sources"].items():
        if not facts["splits"][split]["tokens"]:
            continue
        directory = prepared_dir / name / split
        index = json.loads((directory / "index.json").read_text())
        if index["config"].get("compression"):
            raise DataError(f"{directory} holds compressed chunks: lmpre reads only the chunks it writes")
        for chunk in index["chunks"]:
            offset = (int(chunk["chunk_size"]) + 2) * 4
            yield name, np.memmap(directory / chunk["filename"], dtype, "r", offset, (int(chunk["dim"]),))


def split_tokens(prepared_dir: Path, manifest: Mapping[str, Any], split: str) -> np.ndarray:
    """The whole token stream of a prepared split, every source's in turn."""
    streams = [tokens for _, tokens in split_chunks(prepared_dir, manifest, split)]
    return np.concatenate(streams) if streams else np.zeros(0, dtype=np.dtype(manifest["dtype"]))


def split_batches(
    prepared_dir: Path, manifest: Mapping[str, Any], split: str, window: int, batch_size: int
) -> Iterator[tuple[Tensor, list[str]]]:
    """Every window of a prepared split, in batches of (windows, the source of each): the windows training
    validates on (non-overlapping, `window` tokens, cut inside each chunk as litdata's TokensLoader cuts them),
    all of them: the datamodule's loader drops a last, incomplete batch."""
    rows: list[np.ndarray] = []
    names: list[str] = []

    def batch() -> tuple[Tensor, list[str]]:
        tokens = torch.from_numpy(np.concatenate(rows).astype(np.int64))
        found = (tokens, list(names))
        rows.clear()
        names.clear()
        return found

    for name, tokens in split_chunks(prepared_dir, manifest, split):
        count = len(tokens) // window
        windows = tokens[: count * window].reshape(count, window)
        start = 0
        while start < count:
            take = min(batch_size - len(names), count - start)
            rows.append(windows[start : start + take])
            names += [name] * take
            start += take
            if len(names) == batch_size:
                yield batch()
    if names:
        yield batch()
