"""Markup strippers for the Debian documentation formats that build_corpus.py reads.

Each function turns one source file's text (HTML, POD, reStructuredText, asciidoc or
plain text) into plain prose-like text. They are deliberately simple, stdlib-only
strippers: the goal is generic English for pretraining, not faithful rendering, so
markup that would otherwise dominate the token stream (tags, roles, directive
lines, underline rulers) is removed and everything else is kept.
"""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser

# Elements whose whole content is navigation, scripts or page chrome, not prose.
_SKIP_TAGS = {"script", "style", "head", "nav", "noscript", "svg", "title"}
# Classes and ids that Sphinx, DocBook and the Debian handbook use for navigation.
_SKIP_CLASSES = {
    "navheader", "navfooter", "sphinxsidebar", "related", "footer", "toc", "breadcrumbs",
    "headerlink", "navigation", "docnav", "header", "indextable", "legalnotice",
}
_BLOCK_TAGS = {
    "p", "div", "br", "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "pre", "section",
    "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "article", "body", "figure",
}
_VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "wbr", "source"}


class _TextExtractor(HTMLParser):
    """Collect text outside skipped subtrees; block elements become line breaks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_tag: str | None = None  # tag name of the subtree being skipped
        self.skip_depth = 0  # nesting of that tag name inside the skipped subtree
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if self.skip_tag is not None:
            if tag == self.skip_tag and tag not in _VOID_TAGS:
                self.skip_depth += 1
            return
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split()) | {attrs.get("id") or ""}
        if tag in _SKIP_TAGS or classes & _SKIP_CLASSES:
            if tag not in _VOID_TAGS:
                self.skip_tag, self.skip_depth = tag, 1
            return
        if tag == "pre":
            self.pre += 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data):
        if self.skip_tag is not None:
            return
        # Outside <pre> HTML whitespace is insignificant; inside it, lines matter.
        self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


def pod_to_text(path: str) -> str:
    """Render POD with perl's own pod2text (ships with perl, so always present here)."""
    out = subprocess.run(
        ["pod2text", "--utf8", path], capture_output=True, check=False, timeout=120
    )
    return out.stdout.decode("utf-8", errors="replace")


_RST_ROLE = re.compile(r":[\w:.-]+:`([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LITERAL = re.compile(r"``([^`]+)``")
_RST_REF = re.compile(r"`([^`<]+?)\s*(?:<[^>]*>)?`_{1,2}")
_RULER = re.compile(r"^\s*([=\-~^\"'`#*+_.:])\1{2,}\s*$")


def rst_to_text(src: str) -> str:
    """Drop directive/comment lines and field lists; unwrap roles, literals and refs."""
    out = []
    in_directive = False
    for line in src.splitlines():
        stripped = line.strip()
        if stripped.startswith(".. "):
            # Directive options follow indented; a code-block body is indented too and
            # is kept, but its ":option:" lines are not.
            in_directive = True
            continue
        if in_directive and stripped.startswith(":") and line[:1].isspace():
            continue
        if stripped:
            in_directive = in_directive and line[:1].isspace()
        if _RULER.match(line):
            continue
        line = _RST_ROLE.sub(r"\1", line)
        line = _RST_LITERAL.sub(r"\1", line)
        line = _RST_REF.sub(r"\1", line)
        out.append(line)
    return "\n".join(out)


_ASCIIDOC_DROP = re.compile(r"^(include::|ifdef::|ifndef::|endif::|:[\w-]+:|\[\[.*\]\]$|\[[\w ,=\"-]*\]$)")
_ASCIIDOC_LINK = re.compile(r"(?:link|linkgit|xref):([\w./#-]+)\[([^\]]*)\]")


def plain_to_text(src: str) -> str:
    """Plain text and asciidoc: drop rulers, include/attribute lines; unwrap links."""
    out = []
    for line in src.splitlines():
        if _RULER.match(line) or _ASCIIDOC_DROP.match(line.strip()):
            continue
        out.append(_ASCIIDOC_LINK.sub(lambda m: m.group(2) or m.group(1), line))
    return "\n".join(out)


_HAS_WORD = re.compile(r"[A-Za-z0-9]{2}")
_WORD = re.compile(r"[\"'(]?[A-Za-z][A-Za-z'-]*[.,;:!?)\"']*")


def normalise(text: str) -> str:
    """Normalise whitespace; drop near-empty lines; keep single blank lines as breaks.

    A "near-empty" line has no two consecutive alphanumerics (bullets, lone
    punctuation, table borders): it carries no language for the model to learn.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
    text = text.replace("\t", "    ").replace("\f", "\n")
    lines = []
    blank = True  # suppresses leading blank lines
    for raw in text.split("\n"):
        # Collapse runs of spaces inside the line but keep (shortened) indentation,
        # which is how code examples stay readable.
        indent = len(raw) - len(raw.lstrip(" "))
        body = re.sub(r" {2,}", " ", raw.strip())
        if not body or not _HAS_WORD.search(body):
            if not blank:
                lines.append("")
            blank = True
            continue
        # One leading space is an artefact of collapsed HTML whitespace, not indentation.
        lines.append(" " * (min(indent, 8) if indent >= 2 else 0) + body)
        blank = False
    return "\n".join(lines).strip() + "\n"


def prose_score(text: str) -> float:
    """Share of words that sit on lines of >= 8 words, most of them alphabetic.

    Used to pick book-like documents and to drop link lists: index and table-of-
    contents pages score near zero, running prose near one.
    """
    total = prose = 0
    for line in text.splitlines():
        n = len(line.split())
        total += n
        # Code lines have many symbols; sentences are mostly plain words.
        if n >= 8 and sum(_WORD.fullmatch(w) is not None for w in line.split()) >= 0.6 * n:
            prose += n
    return prose / total if total else 0.0
