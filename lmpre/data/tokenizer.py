"""The tokenizer of a preparation: a byte-level BPE trained on a bounded sample of the train documents, raw bytes
(no merges, for character-level work), or a given one (a local tokenizer.json, or a Hub model's) — always with
the special tokens every objective needs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmpre.errors import DataError

# Ids 0..102 in this order for trained tokenizers: end of text (document separator), padding, masked-LM mask,
# span-corruption sentinels. A given tokenizer keeps its own ids and gets those it lacks appended.
SPECIAL_TOKENS = ["<|endoftext|>", "<pad>", "<mask>", *(f"<extra_id_{i}>" for i in range(100))]
MIN_VOCAB_SIZE = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
KINDS = ("bpe", "bytes", "file", "hub")


@dataclass(frozen=True)
class TokenizerSpec:
    """`kind`: bpe (trained, `vocab_size`, on at most `sample_bytes` of train text), bytes (one token per byte),
    file (`path` to a tokenizer.json) or hub (`path` names a Hub model, e.g. gpt2; needs the network once)."""

    kind: str = "bpe"
    vocab_size: int = 8192
    sample_bytes: int = 256 * 2**20
    path: str | None = None

    def check(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"data.tokenizer.kind={self.kind} is not one of {', '.join(KINDS)}.")
        if self.kind == "bpe" and self.vocab_size < MIN_VOCAB_SIZE:
            raise DataError(
                f"data.tokenizer.vocab_size={self.vocab_size} is too small: byte-level BPE needs at least "
                f"{MIN_VOCAB_SIZE} (its 256 byte tokens plus the special tokens); or use data.tokenizer.kind=bytes."
            )
        if self.kind in ("file", "hub") and not self.path:
            raise DataError(f"data.tokenizer.kind={self.kind} needs data.tokenizer.path (a tokenizer.json or Hub id).")
        if self.kind == "file" and not Path(str(self.path)).expanduser().is_file():
            raise DataError(f"data.tokenizer.path={self.path} is not a file: pass the path of a tokenizer.json.")


def build_tokenizer(spec: TokenizerSpec, train_texts: Iterable[str]) -> Tokenizer:
    """The tokenizer `spec` describes; `train_texts` is read only by `bpe`, up to `sample_bytes`."""
    if spec.kind == "bytes":
        return train_tokenizer([], MIN_VOCAB_SIZE)
    if spec.kind == "bpe":
        return train_tokenizer(_bounded(train_texts, spec.sample_bytes), spec.vocab_size)
    if spec.kind == "file":
        tokenizer = Tokenizer.from_file(str(Path(str(spec.path)).expanduser()))
    else:
        try:
            tokenizer = Tokenizer.from_pretrained(str(spec.path))
        except Exception as err:  # offline, unknown model, no tokenizer.json in the repo: one remedy for all
            raise DataError(
                f"Loading the tokenizer {spec.path} from the Hugging Face Hub failed ({type(err).__name__}: {err}). "
                "Without network, pass data.tokenizer.kind=file data.tokenizer.path=PATH/tokenizer.json."
            ) from err
    missing = [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in missing])
    return tokenizer


def train_tokenizer(documents: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train on `documents`; decode(encode(text)) == text for any text (no prefix space, no post-processing)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return tokenizer


def _bounded(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """The texts until `max_bytes` of UTF-8: the tokenizer's memory stays flat however large the corpus."""
    total = 0
    for text in texts:
        yield text
        total += len(text.encode())
        if total >= max_bytes:
            return


class SpecialTokens(TypedDict):
    eot: int
    pad: int
    mask: int
    sentinels: list[int]


def special_token_ids(tokenizer: Tokenizer) -> SpecialTokens:
    """The ids of the special tokens, read from the tokenizer."""
    ids = [_token_id(tokenizer, token) for token in SPECIAL_TOKENS]
    return SpecialTokens(eot=ids[0], pad=ids[1], mask=ids[2], sentinels=ids[3:])


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    id = tokenizer.token_to_id(token)
    if id is None:
        raise DataError(f"The tokenizer has no {token} token: delete the prepared data directory to rebuild it.")
    return id
