"""MediaWiki XML dumps (Wikipedia's `pages-articles`): articles streamed out of the XML, their wiki markup turned
into plain text in the workers."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import mwparserfromhell
from mwparserfromhell.nodes import ExternalLink, Heading, HTMLEntity, Node, Tag, Text, Wikilink
from mwparserfromhell.parser import ParserError
from mwparserfromhell.wikicode import Wikicode

from lmpre.data.document import Document
from lmpre.data.sources.base import DECOMPRESSION_ERRORS, Source, WorkUnit, corrupt_file, open_binary
from lmpre.errors import DataError

ARTICLE_NAMESPACE = "0"
# Templates that mark a page as a list of other pages rather than an article: {{disambiguation}} and its
# aliases and specialised forms ({{geodis}}, {{hndis}}), and set-index lists ({{set index article}}, {{surname}}).
_DISAMBIGUATION = re.compile(
    r"\{\{\s*(?:[\w -]*disambig\w*|dab|disamb|[a-z]*dis|sia|set index(?: article)?|[a-z]+ ?index|surname|given name)"
    r"\s*(?:\||\}\})",
    re.IGNORECASE,
)
# Links into these namespaces place a file or a category; they show no text where they stand.
_HIDDEN_LINK_NAMESPACES = frozenset({"file", "image", "media", "category"})
# [[fr:Anarchisme]]: a link to the same article in another language, shown in the sidebar, not in the text.
_LANGUAGE_PREFIX = re.compile(r"[a-z]{2,3}(?:-[a-z]{2,8})*|simple")
# Tags whose content is not prose: footnotes, formulas, tables, galleries, timelines.
_DROPPED_TAGS = frozenset(
    {
        "ref", "references", "math", "chem", "ce", "table", "gallery", "imagemap", "timeline", "graph", "score",
        "hiero", "templatestyles", "mapframe", "maplink", "inputbox", "categorytree",
    }
)  # fmt: skip
# Footnotes and comments, removed before parsing: a third of the markup and half the parse time. Neither nests, so
# a regex finds them exactly (an unclosed comment hides the rest of the page, as in MediaWiki; an unclosed <ref>
# is left to the parser).
_FOOTNOTES_AND_COMMENTS = re.compile(
    r"<!--.*?(?:-->|\Z)|<ref(?:\s[^>]*)?/>|<ref(?:\s[^>]*)?(?<!/)>(?:(?!<ref[\s>/]).)*?</ref\s*>",
    re.DOTALL | re.IGNORECASE,
)
_BEHAVIOUR_SWITCH = re.compile(r"__[A-Z]+__")
_EMPTY_PARENTHESES = re.compile(r"[ \t]+\([ \t]*[,;]?[ \t]*\)")  # what " ({{IPA|…}})" leaves; keeps "f()"
_PARENTHESIS_OPENING_PUNCTUATION = re.compile(r"\([ \t]*[,;][ \t]*")  # "({{lang|…}}; born 1950)"
_SPACE_BEFORE_PUNCTUATION = re.compile(r"[ \t]+(?=[,.;)])")  # "at {{convert|…}}." leaves "at ."
_BOLD_ITALIC_LEFTOVER = re.compile(r"'{2,}")  # unbalanced quotes the parser leaves as text
_HORIZONTAL_SPACE = re.compile(r"[ \t]+|[ \t\xa0]{2,}")  # a lone non-breaking space is kept
_BLANK_LINES = re.compile(r"\n{3,}")


class MediaWiki(Source):
    """Articles of MediaWiki XML dumps (`*.xml`, `*.xml.bz2`), one document per page, id = page title.

    Only the article namespace is read; redirects and disambiguation pages are skipped and counted. `read` yields
    the raw wikitext and `clean` converts it to plain text, because parsing wiki markup costs far more than
    decompressing the dump and `clean` runs in every worker.
    """

    patterns = ("*.xml", "*.xml.bz2", "*.xml.gz", "*.xml.xz", "*.xml.zst")

    def read(self, unit: WorkUnit, stats: Counter[str]) -> Iterator[Document]:
        path = Path(unit.path)
        try:
            with open_binary(path) as file:
                for page in _pages(file, path, self.setting):
                    if page.namespace != ARTICLE_NAMESPACE:
                        stats["skipped.namespace"] += 1
                    elif page.redirect or page.text.lstrip()[:9].upper() == "#REDIRECT":
                        stats["skipped.redirect"] += 1
                    elif page.title.endswith("(disambiguation)") or _DISAMBIGUATION.search(page.text):
                        stats["skipped.disambiguation"] += 1
                    else:
                        yield self.document(page.text, page.title, page_id=page.id)
        except ET.ParseError as err:
            line, column = err.position
            raise DataError(
                f"{path} line {line}, column {column}: not well-formed XML ({str(err).split(':')[0]}): the dump "
                f"is truncated or corrupt. Download it again, or leave it out of {self.setting}.path."
            ) from err
        except DECOMPRESSION_ERRORS as err:  # a truncated or damaged compressed stream
            raise corrupt_file(path, self.setting, err) from err

    def clean(self, document: Document) -> Document | str:
        try:
            text = wikitext_to_text(document.text)
        except ParserError:  # mwparserfromhell gave up on this page's markup
            return "mediawiki.unparsable"
        return replace(document, text=text) if text else "mediawiki.empty"


@dataclass(frozen=True)
class _Page:
    title: str
    namespace: str
    id: str
    redirect: bool
    text: str


def _pages(file: IO[bytes], path: Path, setting: str) -> Iterator[_Page]:
    """The pages of a dump, streamed: each is cleared from the tree once read, so memory stays flat.

    Tags are matched in whatever namespace the root element declares (export-0.10, 0.11, …)."""
    events = ET.iterparse(file, events=("start", "end"))
    _, root = next(events)
    namespace = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    if root.tag != f"{namespace}mediawiki":
        raise DataError(
            f"{path} is not a MediaWiki XML dump (its root element is <{root.tag.removeprefix(namespace)}>, "
            f"not <mediawiki>): leave it out of {setting}.path, or choose the source for that kind of file."
        )
    page_tag, revision_tag = f"{namespace}page", f"{namespace}revision"
    for event, element in events:
        if event != "end" or element.tag != page_tag:
            continue
        revisions = element.findall(revision_tag)  # history dumps hold several: the last is the current text
        yield _Page(
            title=element.findtext(f"{namespace}title", ""),
            namespace=element.findtext(f"{namespace}ns", ARTICLE_NAMESPACE),  # dumps before export-0.4 have none
            id=element.findtext(f"{namespace}id", ""),
            redirect=element.find(f"{namespace}redirect") is not None,
            text=revisions[-1].findtext(f"{namespace}text", "") if revisions else "",
        )
        root.clear()  # drops the page just read (and its revisions) from the tree


def wikitext_to_text(wikitext: str) -> str:
    """Plain text of an article as a reader sees it: links as their text, headings as lines; templates,
    footnotes, tables, files, categories and formulas dropped. Headings of sections left empty (References,
    External links) are dropped too."""
    sections: list[tuple[int, str, list[str]]] = [(0, "", [])]  # (heading level, heading, body parts)
    # Bold and italic quotes stay text (removed in _tidy): parsed as tags, one unbalanced quote can turn the rest of
    # a paragraph, footnotes and links included, back into raw markup.
    for node in mwparserfromhell.parse(_FOOTNOTES_AND_COMMENTS.sub("", wikitext), skip_style_tags=True).nodes:
        if isinstance(node, Heading):
            sections.append((node.level, _tidy(_render(node.title)).replace("\n", " "), []))
        else:
            sections[-1][2].append(_render_node(node))
    bodies = [_tidy("".join(parts)) for _, _, parts in sections]
    blocks = []
    for i, (_, heading, _) in enumerate(sections):
        if heading and _has_content(sections, bodies, i):
            blocks.append(heading)
        if bodies[i]:
            blocks.append(bodies[i])
    return "\n\n".join(blocks)


def _has_content(sections: list[tuple[int, str, list[str]]], bodies: list[str], index: int) -> bool:
    """Whether a section, or a subsection of it, has text."""
    level = sections[index][0]
    for i in range(index, len(sections)):
        if i > index and sections[i][0] <= level:
            return False
        if bodies[i]:
            return True
    return False


def _render(code: Wikicode) -> str:
    return "".join(_render_node(node) for node in code.nodes)


def _render_node(node: Node) -> str:
    if isinstance(node, Text):
        return str(node.value)
    if isinstance(node, Wikilink):
        return _render_wikilink(node)
    if isinstance(node, ExternalLink):
        if not node.brackets:
            return str(node.url)  # a bare URL is shown as it is
        return _render(node.title) if node.title is not None else ""  # [http://x] is shown as a number: drop
    if isinstance(node, Tag):
        name = str(node.tag).strip().lower()
        if name in _DROPPED_TAGS:
            return ""
        if name == "br":
            return "\n"
        return _render(node.contents) if node.contents is not None else ""  # list bullets have no contents
    if isinstance(node, Heading):
        return _render(node.title).strip()
    if isinstance(node, HTMLEntity):
        return str(node.normalize())
    return ""  # templates, template arguments, comments


def _render_wikilink(link: Wikilink) -> str:
    title = str(link.title).strip()
    shown_as_link = title.startswith(":")  # [[:Category:X]] links to a category instead of placing the page in it
    target = title.lstrip(":")
    prefix = target.split(":", 1)[0].strip().lower() if ":" in target else ""
    if not shown_as_link and (prefix in _HIDDEN_LINK_NAMESPACES or _LANGUAGE_PREFIX.fullmatch(prefix)):
        return ""
    if link.text is not None and str(link.text).strip():
        return _render(link.text)
    return target


def _tidy(text: str) -> str:
    """Whitespace and punctuation as they read once markup has gone: what dropped templates leave behind."""
    text = _BEHAVIOUR_SWITCH.sub("", text)
    text = _BOLD_ITALIC_LEFTOVER.sub("", text)
    text = _EMPTY_PARENTHESES.sub("", text)
    text = _PARENTHESIS_OPENING_PUNCTUATION.sub("(", text)
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = _SPACE_BEFORE_PUNCTUATION.sub("", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()
