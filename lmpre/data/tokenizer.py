"""Byte-level BPE trained on the train split, with the special tokens every objective needs reserved up front."""

from collections.abc import Iterable
from typing import TypedDict

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmpre.errors import DataError

# Ids 0..102 in this order: end of text (document separator), padding, masked-LM mask, span-corruption sentinels.
SPECIAL_TOKENS = ["<|endoftext|>", "<pad>", "<mask>", *(f"<extra_id_{i}>" for i in range(100))]
MIN_VOCAB_SIZE = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)


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
