"""Plain text of DocBook-style HTML (debian-reference), cut into sections at headings.

Standard library only. Navigation, tables of contents and the head are dropped; block elements
end lines; ``<pre>`` keeps its whitespace (shell sessions and code must stay as written);
elsewhere whitespace runs collapse to one space, as a browser shows them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

# Elements whose content is never text of the document.
_SKIP_TAGS = {"head", "script", "style", "title"}
# div classes holding navigation or a table of contents: the same links on every page.
_SKIP_CLASSES = {"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures"}
# Paragraph-like elements: a line break before and after (a blank line between two of them).
_BLOCK_TAGS = {
    "p",
    "div",
    "pre",
    "table",
    "ul",
    "ol",
    "dl",
    "blockquote",
    "hr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
}
# Row-like elements: a line break before only, so that rows and list items follow line by line.
_LINE_TAGS = {"tr", "li", "dt", "dd", "br"}
_HEADINGS = {"h1", "h2", "h3", "h4"}
_VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr"}


@dataclass(frozen=True)
class Section:
    """One section of a page: the anchor of its heading, the heading and the text under it."""

    anchor: str
    title: str
    text: str


class _SectionParser(HTMLParser):
    def __init__(self, split_levels: set[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.split_levels = split_levels
        self.stack: list[tuple[str, bool]] = []  # (tag, starts a skipped region)
        self.skip_depth = 0
        self.pre_depth = 0
        self.parts: list[str] = []
        self.sections: list[tuple[str, list[str]]] = [("", self.parts)]
        self.in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        classes = set((attr.get("class") or "").split())
        skipped = tag in _SKIP_TAGS or bool(classes & _SKIP_CLASSES)
        if tag not in _VOID_TAGS:
            self.stack.append((tag, skipped))
            self.skip_depth += skipped
            self.pre_depth += tag == "pre"
        if tag in self.split_levels and not self.skip_depth:
            self.parts = []
            self.sections.append(("", self.parts))
        self.in_heading = self.in_heading or tag in _HEADINGS
        if tag == "a" and attr.get("id") and self.in_heading and not self.sections[-1][0]:
            # DocBook puts the section's anchor inside its heading: <h2><a id="..."/>Title</h2>.
            self.sections[-1] = (attr["id"] or "", self.parts)
        if tag in _BLOCK_TAGS or tag in _LINE_TAGS:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append("\t")

    def handle_endtag(self, tag: str) -> None:
        # Pop to the matching open tag; tolerates the unclosed tags real pages have.
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                for name, skipped in self.stack[i:]:
                    self.skip_depth -= skipped
                    self.pre_depth -= name == "pre"
                del self.stack[i:]
                break
        if tag in _HEADINGS:
            self.in_heading = False
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.pre_depth:
            # Mark every line of preformatted text so that _tidy leaves its indentation alone.
            self.parts.append(_PRE + data.replace("\n", "\n" + _PRE))
        else:
            self.parts.append(re.sub(r"\s+", " ", data))


_PRE = "\x00"


def _tidy(raw: str) -> str:
    """Strip spaces and tabs at the ends of lines outside of pre text, one tab between table
    cells, blank-line runs squeezed to one."""
    lines = []
    for line in raw.split("\n"):
        if line.startswith(_PRE):
            lines.append(line.replace(_PRE, "").rstrip())
        else:
            lines.append(re.sub(r" *\t[ \t]*", "\t", line.replace(_PRE, "")).strip(" \t"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def html_sections(html: str, split_levels: tuple[str, ...] = ("h2", "h3")) -> list[Section]:
    """Sections of ``html`` cut before each heading in ``split_levels``; text before the first
    heading is a section with an empty anchor. Empty sections are left out."""
    parser = _SectionParser(set(split_levels) & _HEADINGS)
    parser.feed(html)
    parser.close()
    sections = []
    for anchor, parts in parser.sections:
        text = _tidy("".join(parts))
        if text:
            title = text.split("\n", 1)[0].strip()
            sections.append(Section(anchor, title, text))
    return sections


def html_to_text(html: str) -> str:
    """The whole visible text of ``html`` as one string."""
    return "\n\n".join(s.text for s in html_sections(html, split_levels=()))
