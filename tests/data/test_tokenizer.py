from pathlib import Path

import pytest
from tokenizers import Tokenizer

from lmpre.data import SPECIAL_TOKENS, TokenizerSpec, special_token_ids
from lmpre.data import tokenizer as tokenizer_module
from lmpre.data.pipeline import TOKENIZER
from lmpre.data.sources.base import open_binary
from lmpre.data.tokenizer import build_tokenizer
from lmpre.errors import DataError


def test_special_tokens_have_ids_0_to_102_in_order(prepared_wikitext: Path) -> None:
    tokenizer = Tokenizer.from_file(str(prepared_wikitext / TOKENIZER))
    ids = special_token_ids(tokenizer)
    assert ids == {"eot": 0, "pad": 1, "mask": 2, "sentinels": list(range(3, 103))}
    assert [tokenizer.id_to_token(i) for i in range(103)] == SPECIAL_TOKENS
    assert tokenizer.get_vocab_size() == 512


def test_round_trip_is_exact_for_real_text_and_special_tokens(prepared_wikitext: Path, wikitext_raw: Path) -> None:
    tokenizer = Tokenizer.from_file(str(prepared_wikitext / TOKENIZER))
    text = open_binary(wikitext_raw / "wiki.valid.raw.xz").read(20_000).decode()
    text += "\n  Ünïcödé — 日本語 🙂\ttabs\r\n<|endoftext|>next<extra_id_5> <mask>"
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    for token, id in [("<|endoftext|>", 0), ("<mask>", 2), ("<extra_id_5>", 8)]:
        assert id in ids
        assert tokenizer.encode(f"a{token}b").ids.count(id) == 1
    assert tokenizer.encode(" plain text").ids[0] != tokenizer.encode("plain text").ids[0]  # no prefix space


def test_bytes_tokenizer_has_one_token_per_byte() -> None:
    tokenizer = build_tokenizer(TokenizerSpec(kind="bytes"), ["never read"])
    assert tokenizer.get_vocab_size() == 256 + len(SPECIAL_TOKENS)
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    assert len(tokenizer.encode(text).ids) == len(text.encode())
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_bpe_reads_at_most_its_sample() -> None:
    read = []

    def texts():
        for i in range(1000):
            read.append(i)
            yield f"document number {i} " * 50

    build_tokenizer(TokenizerSpec(vocab_size=400, sample_bytes=10_000), texts())
    assert len(read) < 20


def test_a_given_tokenizer_gets_the_special_tokens_it_lacks(prepared_wikitext: Path, tmp_path: Path) -> None:
    plain = Tokenizer.from_file(str(prepared_wikitext / TOKENIZER))
    plain.save(str(tmp_path / "given.json"))
    given = build_tokenizer(TokenizerSpec(kind="file", path=str(tmp_path / "given.json")), [])
    assert special_token_ids(given) == special_token_ids(plain)  # it had them all: unchanged


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TokenizerSpec(kind="wordpiece"), r"data\.tokenizer\.kind=wordpiece is not one of"),
        (TokenizerSpec(vocab_size=100), r"data\.tokenizer\.vocab_size=100 is too small"),
        (TokenizerSpec(kind="file", path="/nowhere.json"), r"data\.tokenizer\.path=/nowhere\.json is not a file"),
        (TokenizerSpec(kind="hub"), r"needs data\.tokenizer\.path"),
    ],
)
def test_invalid_tokenizer_settings_name_the_key(spec: TokenizerSpec, message: str) -> None:
    with pytest.raises(DataError, match=message):
        spec.check()


def test_hub_tokenizer_offline_says_what_to_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    class Offline:
        @staticmethod
        def from_pretrained(name: str) -> Tokenizer:
            raise ConnectionError("no network")

    monkeypatch.setattr(tokenizer_module, "Tokenizer", Offline)
    with pytest.raises(DataError, match=r"(?s)gpt2 .*failed.*data\.tokenizer\.kind=file"):
        build_tokenizer(TokenizerSpec(kind="hub", path="gpt2"), [])
