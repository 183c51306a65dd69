"""Text clean-up that every later step relies on: one Unicode form, no mojibake, plain line structure."""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import replace

import ftfy
import numpy as np
from numpy.typing import NDArray

from lmpre.data.codepoints import char_table, codepoints
from lmpre.data.document import Document
from lmpre.data.filters.base import Filter

# Only the repairs of text decoded with the wrong codec. ftfy's other fixes (curly quotes, ligatures, full-width
# letters, HTML entities, line breaks) change legitimate text, and Normalize does NFC and whitespace itself.
FTFY_CONFIG = ftfy.TextFixerConfig(
    unescape_html=False,
    remove_terminal_escapes=False,
    fix_latin_ligatures=False,
    fix_character_width=False,
    uncurl_quotes=False,
    fix_line_breaks=False,
    remove_control_chars=False,
    normalization=None,
    explain=False,
)
# ftfy reads text at about 5 MB/s, clean or not, so it runs only on text with a sign of mojibake: UTF-8 read as
# Latin-1 or Windows-1252, i.e. a lead byte as Â..ô followed by as many continuation bytes (0x80..0xBF as those
# codecs show them) as it announces: one after Â..ß ("Ã©" for "é"), two after à..ï, three after ð..ô; or stray C1
# controls or surrogates. Mojibake through rarer code pages (Windows-1250/1251, Mac Roman) goes unnoticed.
CONTINUATION = (
    "[\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014\u2018-\u201a"
    "\u201c-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]"
)
LATIN1_MOJIBAKE = re.compile(
    f"[\u00c2-\u00f4](?:(?<=[\u00c2-\u00df]){CONTINUATION}|(?<=[\u00e0-\u00ef]){CONTINUATION}{{2}}|{CONTINUATION}{{3}})"
)
C1_OR_SURROGATE = "[\u0080-\u009f\ud800-\udfff]"  # a sign of mojibake on its own
# Besides "\r\n", everything str.splitlines() breaks at becomes "\n", so every later step sees the same lines.
LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# Control characters but tab and line breaks, and the invisible characters that only split words apart (zero-width
# space, word joiner, byte-order mark). ZWJ/ZWNJ stay: they change the spelling of Persian, Indic scripts, emoji.
INVISIBLE_CHAR = "[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f\u200b\u2060\ufeff]"
INVISIBLE = re.compile(INVISIBLE_CHAR + "+")
BLANK_LINES = re.compile(r"\n{3,}")
# What a text holds of the above, found in one pass (`_found`): each regex scans it only when it can match.
MOJIBAKE_LEAD, C1_OR_SURROGATE_FOUND, INVISIBLE_FOUND, LINE_BREAK_FOUND, SPACE_FOUND = 1, 2, 4, 8, 16
TRAILING_SPACE_FOUND = 32  # whitespace that ends a line: not a character class, found from SPACE_FOUND


class Normalize(Filter):
    """NFC, mojibake repair, invisible characters out, tidy whitespace; a document left empty is dropped.

    Runs first, so that quality rules, dedup keys and the tokenizer see one spelling of each text.
    """

    name = "normalize"

    def __init__(self, nfc: bool = True, fix_mojibake: bool = True, invisible: bool = True, whitespace: bool = True):
        self.nfc = nfc
        self.fix_mojibake = fix_mojibake
        self.invisible = invisible
        self.whitespace = whitespace

    def prepare(self) -> None:
        normalize_classes()

    def __call__(self, document: Document) -> Document | str:
        text = normalize_text(document.text, self.nfc, self.fix_mojibake, self.invisible, self.whitespace)
        if not text.strip():
            return self.drop("empty")
        return document if text == document.text else replace(document, text=text)


def normalize_text(
    text: str, nfc: bool = True, fix_mojibake: bool = True, invisible: bool = True, whitespace: bool = True
) -> str:
    """The text `Normalize` keeps, with each step switchable as there."""
    found = _found(text)
    if fix_mojibake and (found & C1_OR_SURROGATE_FOUND or (found & MOJIBAKE_LEAD and LATIN1_MOJIBAKE.search(text))):
        text = ftfy.fix_text(text, FTFY_CONFIG)
        found = _found(text)
    if nfc and not text.isascii():  # isascii() costs nothing: CPython knows it; NFC keeps the classes found
        text = unicodedata.normalize("NFC", text)
    if invisible and found & INVISIBLE_FOUND:
        text = INVISIBLE.sub("", text)
    if whitespace:
        if found & LINE_BREAK_FOUND:
            text = LINE_BREAKS.sub("\n", text.replace("\r\n", "\n"))
        # Removed characters and new line breaks can put whitespace at the end of a line where `found` saw none.
        if found & (TRAILING_SPACE_FOUND | LINE_BREAK_FOUND | INVISIBLE_FOUND):
            text = "\n".join([line.rstrip() for line in text.split("\n")])  # 6x faster than a regex
        if "\n\n\n" in text:
            text = BLANK_LINES.sub("\n\n", text)
        text = text.strip("\n")
    return text


@functools.cache
def normalize_classes() -> NDArray[np.uint8]:
    """For every code point, which of the patterns above it can start or make up (the *_FOUND bits): looked up for
    a whole text at once, 10x faster than a regex scan that finds nothing."""
    return char_table(
        {
            MOJIBAKE_LEAD: "[\u00c2-\u00f4]",
            C1_OR_SURROGATE_FOUND: C1_OR_SURROGATE,
            INVISIBLE_FOUND: INVISIBLE_CHAR,
            LINE_BREAK_FOUND: LINE_BREAKS.pattern,
            SPACE_FOUND: r"[^\S\n]",
        }
    )


def _found(text: str) -> int:
    """The *_FOUND bits of the characters of `text`, or-ed."""
    points = codepoints(text)
    classes = normalize_classes()[points]
    found = int(np.bitwise_or.reduce(classes, initial=0))
    if found & SPACE_FOUND:
        line_ends = np.append(points[1:] == ord("\n"), True)
        if np.any((classes & SPACE_FOUND != 0) & line_ends):
            found |= TRAILING_SPACE_FOUND
    return found
