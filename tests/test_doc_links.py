"""Every relative link in README.md and docs/**/*.md resolves inside the repository (a user's
clone has nothing beside it), and every #anchor into a markdown file names one of its headings.
The parser and checker are tools/doc_links.py; the unit tests below pin what they report."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("doc_links", REPO / "tools" / "doc_links.py")
doc_links = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(doc_links)


def test_repository_docs_have_no_missing_links():
    bad = doc_links.broken_links(REPO)
    assert not bad, "broken links:\n" + "\n".join(f"{b.file}:{b.line}: {b.target}" for b in bad)


def _repo(tmp_path, files):
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_missing_file_is_reported_and_existing_one_is_not(tmp_path):
    root = _repo(tmp_path, {"README.md": "See [the guide](docs/guide.md) and [gone](docs/gone.md).\n",
                            "docs/guide.md": "# Guide\n"})
    assert doc_links.missing_links(root) == [("README.md", "docs/gone.md")]


def test_external_urls_and_mail_are_not_links_to_check():
    text = "[a](https://example.org/x.md) [b](http://x.y) [c](mailto:someone@example.org) [d](#top) [e](f.md)"
    assert doc_links.relative_links(text) == ["f.md"]


def test_fragment_is_stripped_and_resolved_against_the_file_folder(tmp_path):
    assert doc_links.relative_links("[x](math.md#the-etb-block) ![img](../a%20b.png \"t\")") == ["math.md", "../a b.png"]
    root = _repo(tmp_path, {"docs/a.md": "[m](math.md#the-etb-block)\n", "docs/math.md": "## The ETB block\n"})
    assert doc_links.missing_links(root) == []
    (root / "docs" / "math.md").write_text("## Something else\n")
    assert doc_links.missing_links(root) == [("docs/a.md", "math.md#the-etb-block")]


def test_missing_anchor_is_reported_in_other_and_same_file(tmp_path):
    root = _repo(tmp_path, {
        "README.md": "# Top\n\n## Quick start (fresh machine)\n\n[ok](#quick-start-fresh-machine) [bad](#nope)\n"
                     "[ok2](docs/b.md#evaluation-python--m-etbkernels-eval) [bad2](docs/b.md#evaluation)\n",
        "docs/b.md": "## Evaluation: `python -m etbkernels eval`\n"})
    assert doc_links.missing_links(root) == [("README.md", "#nope"), ("README.md", "docs/b.md#evaluation")]


def test_links_in_code_and_comments_are_ignored():
    text = ("```bash\n[x](in_fence.md)\n```\n"
            "~~~\n[y](in_tilde_fence.md)\n~~~\n"
            "`[z](in_code_span.md)` and `docs/plain_path.md`\n"
            "<!-- [w](in_comment.md) -->\n"
            "[`docs/real.md`](docs/real.md)\n")
    links = doc_links.parse_links(text, "f.md")
    assert [(l.target, l.line) for l in links] == [("docs/real.md", 9)]


def test_parser_returns_file_target_line_triples_for_every_kind_of_link():
    text = ("intro\n[a](one.md \"title\") and ![img](pic.png)\n"
            "a [link\nover two lines](two.md) and [nested [brackets]](three.md)\n"
            "[ref]: four.md\n[s](<with space.md>) [p](x_(y).md)\n")
    got = doc_links.parse_links(text, "doc.md")
    assert got == [("doc.md", "one.md", 2), ("doc.md", "pic.png", 2), ("doc.md", "two.md", 3),
                   ("doc.md", "three.md", 4), ("doc.md", "four.md", 5), ("doc.md", "with space.md", 6),
                   ("doc.md", "x_(y).md", 6)]


def test_path_leaving_the_repository_is_reported_even_if_it_exists(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "ETB.md").write_text("# ETB\n")
    root = _repo(tmp_path / "repo", {"README.md": "[spec](../shared/ETB.md)\n"})
    assert doc_links.missing_links(root) == [("README.md", "../shared/ETB.md")]


def test_github_slugs():
    assert doc_links.github_slug("Where the interval is centred (default: `\"output\"`)") == \
        "where-the-interval-is-centred-default-output"
    assert doc_links.github_slug("Sound bounds tighter than IBP: CROWN-IBP, CROWN's forward mode") == \
        "sound-bounds-tighter-than-ibp-crown-ibp-crowns-forward-mode"
    assert doc_links.github_slug("snake_case and [a link](x.md)") == "snake_case-and-a-link"
    assert doc_links.anchors("# A\n## A\nB\n---\n```\n# not a heading\n```\n") == {"a", "a-1", "b"}
