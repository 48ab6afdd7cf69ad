"""Relative links in the project's markdown: a small parser and a checker (pure Python, no torch).

A user's clone holds only the repository, so every relative link in README.md and docs/ must
name a file or folder inside it, and a ``#anchor`` into a markdown file must name one of its
headings (as GitHub renders them). tests/test_doc_links.py runs :func:`missing_links`; the
parser (:func:`parse_links`) is general so that other checkers (e.g. of the files benchmark
results cite) can reuse it.

What counts as a link: inline links and images ``[text](target)`` / ``![alt](target "title")``
and reference definitions ``[label]: target``. Not links: anything inside fenced code blocks,
inline code spans or HTML comments, and bare paths in prose.

    python tools/doc_links.py [REPO_ROOT]     # prints the missing links; exit status 1 if any
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Iterable, List, NamedTuple, Optional, Set, Tuple
from urllib.parse import unquote


class Link(NamedTuple):
    """One link: the file it is in (as given to the parser), its target as written, its 1-based line."""

    file: str
    target: str
    line: int


_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
# [text](target) or [text](<target>), with an optional title; the text may hold one level of
# nested brackets ([a [b] c]) and span lines.
_INLINE = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"
    r"\(\s*(?:<([^>\n]*)>|((?:[^\s()]|\([^\s()]*\))*))"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*<?([^\s>]+)>?", re.M)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _blank(text: str) -> str:
    """The text with every character but newlines replaced by a space (keeps offsets and lines)."""
    return re.sub(r"[^\n]", " ", text)


def _mask_code(markdown_text: str) -> str:
    """The text with fenced code blocks, HTML comments and inline code spans blanked out."""
    lines = markdown_text.split("\n")
    fence: Optional[str] = None
    for i, line in enumerate(lines):
        m = _FENCE_OPEN.match(line)
        if fence is None:
            if m:
                fence = m.group(1)
                lines[i] = _blank(line)
        else:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip(" `~"):
                fence = None
            lines[i] = _blank(line)
    text = "\n".join(lines)
    text = _HTML_COMMENT.sub(lambda m: _blank(m.group(0)), text)
    # a code span keeps its backticks as placeholders: [`a/b.md`](a/b.md) still reads as a link
    return _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", "x", m.group(0)), text)


def parse_links(markdown_text: str, file: str = "") -> List[Link]:
    """Every link target in the text, in order, as (file, target, line) triples.

    Targets are returned as written (external URLs and ``#fragments`` included); see
    :func:`relative_links` for the ones that name files of the repository.
    """
    text = _mask_code(markdown_text)
    found: List[Tuple[int, str]] = []
    for m in _INLINE.finditer(text):
        start = m.start(1) if m.group(1) is not None else m.start(2)
        target = markdown_text[start:start + len(m.group(1) if m.group(1) is not None else m.group(2))]
        found.append((m.start(), target))
    for m in _REF_DEF.finditer(text):
        found.append((m.start(1), markdown_text[m.start(1):m.end(1)]))
    found.sort()
    return [Link(file, t.strip(), text.count("\n", 0, pos) + 1) for pos, t in found if t.strip()]


def is_external(target: str) -> bool:
    """http(s)://, mailto: and any other URL scheme, or a protocol-relative //host/..."""
    return bool(_SCHEME.match(target)) or target.startswith("//")


def split_target(target: str) -> Tuple[str, str]:
    """(path, fragment) of a relative target, with any ?query dropped and %-escapes decoded."""
    path, _, fragment = target.partition("#")
    path = path.partition("?")[0]
    return unquote(path), unquote(fragment)


def relative_links(markdown_text: str) -> List[str]:
    """Targets that name files or folders of the repository, without their ``#fragment``.

    External URLs and pure ``#anchors`` are left out; so is anything in code.
    """
    out = []
    for link in parse_links(markdown_text):
        if is_external(link.target):
            continue
        path, _ = split_target(link.target)
        if path:
            out.append(path)
    return out


# --- headings and their GitHub anchors -------------------------------------------------------

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_HTML_ID = re.compile(r"<a\s[^>]*\b(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_MD_LINK_TEXT = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, punctuation other than '-' and
    '_' dropped, spaces turned into '-' (markdown links in it count by their text only)."""
    text = _MD_LINK_TEXT.sub(r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(markdown_text: str) -> List[str]:
    """The text of every ATX (``# ...``) and setext (underlined) heading outside code blocks."""
    lines = markdown_text.split("\n")
    masked = _mask_code(markdown_text).split("\n")
    out = []
    for i, line in enumerate(masked):
        m = _ATX.match(line)
        if m:
            start = m.start(2) if m.group(2) is not None else len(line)
            out.append(lines[i][start:m.end(2) if m.group(2) is not None else len(line)].strip())
        elif (i > 0 and _SETEXT.match(line) and masked[i - 1].strip() and not _ATX.match(masked[i - 1])
              and not masked[i - 1].lstrip().startswith(("-", "*", "+", ">", "|"))):
            out.append(lines[i - 1].strip())
    return out


def anchors(markdown_text: str) -> Set[str]:
    """Every anchor a reader can link to in a markdown file: heading slugs (GitHub numbers
    repeats -1, -2, ...) and explicit ``<a name=...>`` / ``<a id=...>`` targets."""
    seen: dict = {}
    out: Set[str] = set()
    for h in headings(markdown_text):
        slug = github_slug(h)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    out.update(_HTML_ID.findall(markdown_text))
    return out


# --- the checker ------------------------------------------------------------------------------

def doc_files(repo_root) -> List[Path]:
    """README.md and every markdown file under docs/ (sorted)."""
    root = Path(repo_root)
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    docs = root / "docs"
    if docs.is_dir():
        files += sorted(p for p in docs.rglob("*.md") if p.is_file())
    return files


def check_links(links: Iterable[Link], base: Path, repo_root) -> List[Link]:
    """The links among ``links`` (written in a file of folder ``base``) that do not resolve inside
    ``repo_root``: a missing file or folder, a path that leaves the repository (a user's clone
    has nothing outside it), or a ``#anchor`` that names no heading of the markdown file."""
    root = Path(repo_root).resolve()
    bad = []
    for link in links:
        if is_external(link.target):
            continue
        path, fragment = split_target(link.target)
        if path.startswith("/"):  # GitHub resolves /x against the repository root
            dest = (root / path.lstrip("/")).resolve()
        elif path:
            dest = (base / path).resolve()
        else:
            dest = (base / Path(link.file).name).resolve() if link.file else None
            if dest is None or not fragment:
                continue
        if dest != root and root not in dest.parents:
            bad.append(link)
        elif not dest.exists():
            bad.append(link)
        elif fragment and dest.is_file() and dest.suffix.lower() == ".md":
            if fragment.lower() not in {a.lower() for a in anchors(dest.read_text(encoding="utf-8"))}:
                bad.append(link)
    return bad


def broken_links(repo_root) -> List[Link]:
    """Every broken link of README.md and docs/**/*.md, as (file relative to the root, target, line)."""
    root = Path(repo_root).resolve()
    bad: List[Link] = []
    for f in doc_files(root):
        rel = f.resolve().relative_to(root).as_posix()
        bad += check_links(parse_links(f.read_text(encoding="utf-8"), rel), f.resolve().parent, root)
    return bad


def missing_links(repo_root) -> List[Tuple[str, str]]:
    """(file, target) for every broken link of README.md and docs/**/*.md (see :func:`check_links`)."""
    return [(link.file, link.target) for link in broken_links(repo_root)]


def main(argv: List[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    bad = broken_links(root)
    for link in bad:
        print(f"{link.file}:{link.line}: {link.target}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
