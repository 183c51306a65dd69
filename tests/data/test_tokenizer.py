from pathlib import Path

from tokenizers import Tokenizer

from lmpre.data import SPECIAL_TOKENS, special_token_ids
from lmpre.data.pipeline import TOKENIZER


def test_special_tokens_have_ids_0_to_102_in_order(prepared_wikitext: Path) -> None:
    tokenizer = Tokenizer.from_file(str(prepared_wikitext / TOKENIZER))
    ids = special_token_ids(tokenizer)
    assert ids == {"eot": 0, "pad": 1, "mask": 2, "sentinels": list(range(3, 103))}
    assert [tokenizer.id_to_token(i) for i in range(103)] == SPECIAL_TOKENS
    assert tokenizer.get_vocab_size() == 512


def test_round_trip_is_exact_for_real_text_and_special_tokens(prepared_wikitext: Path, shared_data: Path) -> None:
    tokenizer = Tokenizer.from_file(str(prepared_wikitext / TOKENIZER))
    text = (shared_data / "wikitext-2-raw" / "wiki.valid.raw").read_text()[:20_000]
    text += "\n  Ünïcödé — 日本語 🙂\ttabs\r\n<|endoftext|>next<extra_id_5> <mask>"
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    for token, id in [("<|endoftext|>", 0), ("<mask>", 2), ("<extra_id_5>", 8)]:
        assert id in ids
        assert tokenizer.encode(f"a{token}b").ids.count(id) == 1
    assert tokenizer.encode(" plain text").ids[0] != tokenizer.encode("plain text").ids[0]  # no prefix space
