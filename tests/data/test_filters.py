"""Filters: each rule keeps and drops hand-made documents on both sides of its threshold; real English passes."""

from __future__ import annotations

import itertools
import pickle
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ftfy
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lmpre.data.codepoints import word_classes
from lmpre.data.curate import Curation
from lmpre.data.dedup import MinHasher
from lmpre.data.document import Document
from lmpre.data.filters import Filter, GopherQuality, GopherRepetition, Language, Normalize, run_filters
from lmpre.data.filters.language import identifier
from lmpre.data.filters.normalize import (
    BLANK_LINES,
    C1_OR_SURROGATE,
    FTFY_CONFIG,
    INVISIBLE,
    LATIN1_MOJIBAKE,
    LINE_BREAKS,
    normalize_classes,
    normalize_text,
)
from lmpre.data.filters.repetition import NgramCounts
from lmpre.data.filters.words import words_of
from lmpre.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf" / "filter"
QUALITY_RULES = [k for k in vars(GopherQuality()) if k.startswith(("min_", "max_"))]
REPETITION_RULES = list(vars(GopherRepetition()))


def doc(text: str) -> Document:
    return Document(text=text, id="test")


def kept(filter_: Filter, text: str) -> bool:
    result = filter_(doc(text))
    return not isinstance(result, str)


def drop_reason(filter_: Filter, text: str) -> str | None:
    result = filter_(doc(text))
    return result if isinstance(result, str) else None


def unique_words(n: int, length: int = 5) -> list[str]:
    """`n` different words of `length` letters (no stop words among them)."""
    letters = "bcdfghjklmnpqrstvwxz"
    return ["".join(chars) for chars in itertools.islice(itertools.product(letters, repeat=length), n)]


# Normalize


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("cafÃ©", "café"),  # UTF-8 read as Latin-1
        ("â€œquotedâ€\x9d â€” dash", "“quoted” — dash"),  # … as Windows-1252, with a stray C1 control
        ("e\u0301", "é"),  # NFC
        ("a\r\nb\rc", "a\nb\nc"),
        ("line  \t\nnext\t", "line\nnext"),  # trailing whitespace
        ("\n\n  \npara\n\n\n\n\nnext\n\n", "para\n\nnext"),  # one blank line at most, none at the ends
        ("zero\u200bwidth\x00 \ufeffbom", "zerowidth bom"),
        ("a\u2028b\x0cc", "a\nb\nc"),  # every line break str.splitlines knows
    ],
)
def test_normalize_repairs(raw: str, clean: str) -> None:
    result = Normalize()(doc(raw))
    assert isinstance(result, Document)
    assert result.text == clean


@pytest.mark.parametrize(
    "text",
    [
        "“curly quotes” — dashes – and … ellipses",
        "ﬁne ligatures, ＦＵＬＬ width, &amp; entities, <b>tags</b>",
        "Ελληνικά, русский, 日本語, emoji 👩\u200d💻 with a zero-width joiner",
        "déjà vu in Zürich: the abbé’s naïve façade",
        "tab\tinside\na line",
    ],
)
def test_normalize_keeps_legitimate_text(text: str) -> None:
    document = doc(text)
    assert Normalize()(document) is document  # unchanged text: the same object, nothing copied


@pytest.mark.parametrize(
    ("step", "raw"),
    [("nfc", "e\u0301"), ("fix_mojibake", "cafÃ©"), ("invisible", "a\u200bb"), ("whitespace", "a  \n\n\n\nb")],
)
def test_normalize_steps_switch_off(step: str, raw: str) -> None:
    assert Normalize()(doc(raw)).text != raw  # type: ignore[union-attr]
    assert Normalize(**{step: False})(doc(raw)).text == raw  # type: ignore[union-attr]


def test_normalize_drops_empty() -> None:
    assert drop_reason(Normalize(), " \n\u200b\n\t ") == "normalize.empty"


# GopherQuality: each rule alone, at its published threshold


def only_quality(**rule: Any) -> GopherQuality:
    settings: dict[str, Any] = {**dict.fromkeys(QUALITY_RULES), **rule}
    return GopherQuality(**settings)


def prose(n: int) -> str:
    """`n` words of five letters or fewer, with stop words."""
    return " ".join(itertools.islice(itertools.cycle(["the", "river", "and", "stone", "of", "light"]), n))


@pytest.mark.parametrize(
    ("rule", "keep", "drop"),
    [
        ({"min_words": 50}, prose(50), prose(49)),
        ({"min_words": 50}, prose(50), prose(49) + " , @-@ —"),  # punctuation alone is no word
        ({"max_words": 100_000}, prose(100_000), prose(100_001)),
        ({"min_mean_word_length": 3}, "ab abcd " * 30, "ab abc " * 30),  # mean 3 / 2.5
        ({"max_mean_word_length": 10}, "abcdefghi abcdefghijk " * 30, "abcdefghij abcdefghijk " * 30),  # 10 / 10.5
        ({"max_symbol_word_ratio": 0.1}, prose(100) + " #x" * 11, prose(100) + " #x" * 12),  # 11/111, 12/112
        ({"max_symbol_word_ratio": 0.1}, prose(100) + " x..." * 11, prose(100) + " x…" * 12),
        ({"max_bullet_lines": 0.9}, "- item\n" * 9 + "text", "- item\n" * 9 + "• item"),
        ({"max_ellipsis_lines": 0.3}, "cut off...\n" * 3 + "line\n" * 7, "cut off…\n" * 4 + "line\n" * 6),
        ({"min_alpha_words": 0.8}, prose(80) + " 1999" * 20, prose(79) + " 1999" * 21),
        ({"min_stop_words": 2}, "The river AND the stone", "the river, the stone"),
        ({"min_stop_words": 2}, "of the river", "there theory bethe"),  # whole words only
    ],
)
def test_gopher_quality_rule(rule: dict[str, Any], keep: str, drop: str) -> None:
    filter_ = only_quality(**rule)
    assert kept(filter_, keep)
    reason = drop_reason(filter_, drop)
    assert reason is not None
    assert reason.startswith("gopher_quality.")


def test_gopher_quality_reasons_name_the_rule() -> None:
    assert drop_reason(GopherQuality(), prose(10)) == "gopher_quality.word_count"
    assert drop_reason(GopherQuality(), "river stone light " * 30) == "gopher_quality.stop_words"
    assert drop_reason(GopherQuality(), prose(50) + " 1999" * 30) == "gopher_quality.alpha_words"


def test_gopher_quality_rules_switch_off() -> None:
    junk = "# 1 ...\n" * 5
    assert not kept(GopherQuality(), junk)
    assert kept(only_quality(), junk)


# GopherRepetition: each rule alone, at its published threshold


def only_repetition(**rule: Any) -> GopherRepetition:
    settings: dict[str, Any] = {**dict.fromkeys(REPETITION_RULES), **rule}
    return GopherRepetition(**settings)


def repeated(unique: int, copies: int) -> list[str]:
    """`unique` different 5-letter words, then `copies` more of the first."""
    words = unique_words(unique)
    return words + words[:1] * copies


def repeated_run(n: int, copies: int, unique: int) -> str:
    """`unique` different words with a run of `n` other words inserted `copies` times, apart."""
    run, rest = unique_words(n + unique)[:n], unique_words(n + unique)[n:]
    gap = max(unique // copies, 1)
    pieces = [" ".join(rest[i * gap : (i + 1) * gap] + run) for i in range(copies)]
    return " ".join([*pieces, *rest[copies * gap :]])


@pytest.mark.parametrize(
    ("rule", "keep", "drop"),
    [
        # 3 of 10 lines repeat an earlier one / 4 of 10
        ({"max_duplicate_lines": 0.3}, "\n".join(repeated(7, 3)), "\n".join(repeated(6, 4))),
        ({"max_duplicate_paragraphs": 0.3}, "\n\n".join(repeated(7, 3)), "\n\n".join(repeated(6, 4))),
        # 5 of 25 characters in a repeated line / 5 of 20
        ({"max_duplicate_line_chars": 0.2}, "\n".join(repeated(4, 1)), "\n".join(repeated(3, 1))),
        ({"max_duplicate_paragraph_chars": 0.2}, "\n\n".join(repeated(4, 1)), "\n\n".join(repeated(3, 1))),
    ],
)
def test_gopher_repetition_line_rules(rule: dict[str, Any], keep: str, drop: str) -> None:
    filter_ = only_repetition(**rule)
    assert kept(filter_, keep)
    reason = drop_reason(filter_, drop)
    assert reason == f"gopher_repetition.{next(iter(rule)).removeprefix('max_')}"


@pytest.mark.parametrize(("n", "limit"), [(2, 0.20), (3, 0.18), (4, 0.16)])
def test_gopher_repetition_top_ngram(n: int, limit: float) -> None:
    """An n-gram of 5-letter words in 4 copies: its share of characters is 4n / (4n + unique words)."""
    filter_ = only_repetition(**{f"max_top_{n}gram_chars": limit})
    below = int(4 * n / limit - 4 * n) + 1  # the fewest unique words that keep the share at or below the limit
    assert kept(filter_, repeated_run(n, copies=4, unique=below))
    assert drop_reason(filter_, repeated_run(n, copies=4, unique=below - 2)) == f"gopher_repetition.top_{n}gram_chars"


@pytest.mark.parametrize(("n", "limit"), [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)])
def test_gopher_repetition_duplicate_ngrams(n: int, limit: float) -> None:
    """A run of n words twice: both copies count, 2n / (2n + unique words) of the characters."""
    filter_ = only_repetition(**{f"max_duplicate_{n}gram_chars": limit})
    below = int(2 * n / limit - 2 * n) + 1
    assert kept(filter_, repeated_run(n, copies=2, unique=below))
    reason = drop_reason(filter_, repeated_run(n, copies=2, unique=below - 2))
    assert reason == f"gopher_repetition.duplicate_{n}gram_chars"


def test_gopher_repetition_rules_switch_off() -> None:
    spam = "buy now " * 100
    assert not kept(GopherRepetition(), spam)
    assert kept(only_repetition(), spam)


def test_ngram_counts_match_counting_every_ngram() -> None:
    """The candidate-only counting equals plain counting, on text with many repeats (a 6-word vocabulary)."""
    rng = random.Random(0)
    tokens = [rng.choice(["a", "b", "cc", "d", "ee", "f"]) for _ in range(2000)]
    words = words_of(" ".join(tokens))
    ngrams = NgramCounts(words.ids, words.lengths)
    for n, counts in ngrams.up_to(10):
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        expected = Counter(grams)
        assert counts.tolist() == [expected[g] for g in grams]


def test_an_early_stop_still_applies_a_zero_limit_of_a_longer_ngram() -> None:
    """One repeated 10-gram in 300 distinct words: far under the 5-gram limit, yet a 10-gram limit of 0 drops it."""
    words = unique_words(300)
    text = " ".join(words[:150] + words[:10] + words[150:])
    assert kept(GopherRepetition(), text)
    strict = GopherRepetition(max_duplicate_10gram_chars=0.0)
    assert drop_reason(strict, text) == "gopher_repetition.duplicate_10gram_chars"


def test_longer_repeated_ngrams_cover_no_more_characters() -> None:
    """What lets GopherRepetition stop early: duplicate_chars never grows with n."""
    rng = random.Random(1)
    for _ in range(50):
        tokens = [rng.choice(["a", "bb", "ccc", "d", "ee"][: rng.randint(2, 5)]) for _ in range(rng.randint(1, 300))]
        words = words_of(" ".join(tokens))
        ngrams = NgramCounts(words.ids, words.lengths)
        covered = [ngrams.duplicate_chars(n, counts) for n, counts in ngrams.up_to(12)]
        assert covered == sorted(covered, reverse=True)


# Language


def test_language_loads_its_model_once_on_first_use() -> None:
    identifier.cache_clear()
    language = Language()
    assert identifier.cache_info().currsize == 0  # not in the constructor: filters are built before any check
    language(doc("An English sentence about the weather in the harbour."))
    language(doc("Another one."))
    assert identifier.cache_info().misses == 1


def test_language_keeps_english_and_names_other_languages(articles: list[str]) -> None:
    language = Language()
    assert kept(language, articles[0])
    german = "Der Hummer lebt im östlichen Atlantik und im Mittelmeer. Er wird bis zu sechzig Zentimeter lang."
    assert drop_reason(language, german) == "language.de"
    assert drop_reason(Language(languages=["en", "de"]), german) is None
    assert drop_reason(language, "the cat") == "language.low_score"


def test_language_refuses_unknown_codes() -> None:
    with pytest.raises(ConfigError, match="languages"):
        Language(languages=[])
    with pytest.raises(ConfigError, match="does not know"):
        Language(languages=["english"])(doc("Ein deutscher Satz über das Wetter."))


# Together


def test_run_filters_stops_at_the_first_drop() -> None:
    filters = [Normalize(), GopherQuality(min_words=3), GopherRepetition()]
    result = run_filters(filters, doc("cafÃ© au lait  \r\nand the croissant"))
    assert isinstance(result, Document)
    assert result.text == "café au lait\nand the croissant"
    assert run_filters(filters, doc("  \n ")) == "normalize.empty"
    assert run_filters(filters, doc("just two")) == "gopher_quality.word_count"


def test_real_english_passes_every_filter(articles: list[str]) -> None:
    filters = [Normalize(), GopherQuality(), GopherRepetition(), Language()]
    results = [run_filters(filters, doc(text)) for text in articles]
    reasons = Counter(r for r in results if isinstance(r, str))
    assert sum(reasons.values()) <= len(articles) // 10, reasons  # WikiText repeats a few phrases in list articles
    assert all(r.startswith("gopher_repetition.") for r in reasons)


def random_texts(alphabet: list[str], count: int, max_length: int) -> Iterator[str]:
    """`count` strings of up to `max_length` pieces of `alphabet`, the same every run."""
    rng = random.Random(0)
    for _ in range(count):
        yield "".join(rng.choices(alphabet, k=rng.randint(0, max_length)))


def spelled(text: str) -> list[str]:
    words = words_of(text)
    return [text[start:end] for start, end in zip(words.starts.tolist(), words.ends.tolist(), strict=True)]


def test_words_leave_out_punctuation_alone() -> None:
    text = " Homarus gammarus , known as the four @-@ lane ( 24 in ) road . "
    assert spelled(text) == ["Homarus", "gammarus", "known", "as", "the", "four", "lane", "24", "in", "road"]
    assert words_of(text).with_letter == 9  # all but "24"


def test_words_are_the_tokens_with_a_word_character() -> None:
    """Tokens as str.split() cuts them (every Unicode space), kept when they hold a \\w character; equal words get
    equal ids and different words different ones."""
    alphabet = [
        "a",
        "B",
        "é",
        "7",
        "_",
        ",",
        "@",
        "\u2014",
        "\u00bd",
        " ",
        "\n",
        "\t",
        "\u00a0",
        "\u3000",
        "\U0001f600",
    ]
    for text in random_texts(alphabet, count=500, max_length=40):
        expected = [token for token in text.split() if re.search(r"\w", token)]
        assert spelled(text) == expected
        ids = words_of(text).ids.tolist()
        assert [ids.index(i) for i in ids] == [expected.index(word) for word in expected]
        assert words_of(text).with_letter == sum(bool(re.search(r"[^\W\d_]", word)) for word in expected)


def normalize_scanning_everything(text: str) -> str:
    """Normalize as it was before it skipped scans: every regex over every text."""
    if LATIN1_MOJIBAKE.search(text) or re.search(C1_OR_SURROGATE, text):
        text = ftfy.fix_text(text, FTFY_CONFIG)
    text = INVISIBLE.sub("", unicodedata.normalize("NFC", text))
    text = LINE_BREAKS.sub("\n", text.replace("\r\n", "\n"))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return BLANK_LINES.sub("\n\n", text).strip("\n")


def test_normalize_skips_only_scans_that_cannot_match() -> None:
    alphabet = [
        "a",
        " ",
        "\n",
        "\r",
        "\t",
        "\xa0",
        "\u3000",
        "é",
        "e\u0301",
        "Ã©",
        "â€œ",
        "\x9d",
        "\u200b",
        "\x00",
        "\u2028",
        "\x0c",
        "\ud800",
    ]
    for text in random_texts(alphabet, count=5000, max_length=30):
        assert normalize_text(text) == normalize_scanning_everything(text), repr(text)


@pytest.mark.parametrize(
    "filter_", [Normalize(), GopherQuality(), GopherRepetition(), Language()], ids=lambda f: str(f.name)
)
def test_filters_pickle_small(filter_: Filter, articles: list[str]) -> None:
    filter_(doc(articles[1]))  # after first use too: a loaded model stays out of the pickle
    data = pickle.dumps(filter_)
    assert len(data) < 2000
    copy = pickle.loads(data)
    assert vars(copy) == vars(filter_)
    assert copy(doc(articles[1])) == filter_(doc(articles[1]))


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_filter_configs_hold_the_class_defaults(path: Path) -> None:
    built = instantiate(OmegaConf.load(path), _convert_="all")
    defaults = type(built)()
    assert {k: v for k, v in vars(built).items() if not k.startswith("_")} == {
        k: v for k, v in vars(defaults).items() if not k.startswith("_")
    }


def test_a_curation_builds_what_its_steps_share_before_the_workers_fork() -> None:
    """Tables and models are built once in the preparing process: the forked workers inherit them."""
    built_on_first_use = [normalize_classes, word_classes, identifier]
    for cached in built_on_first_use:
        cached.cache_clear()
    Curation(filters=[Normalize(), GopherQuality(), GopherRepetition(), Language()], minhash=MinHasher()).prepare()
    assert [cached.cache_info().currsize for cached in built_on_first_use] == [1, 1, 1]
