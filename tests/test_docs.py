"""The README and docs/ as a reader follows them: every relative link reaches a file, every
`#anchor` a heading as GitHub names it, and the README stays a page read in five minutes."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 220
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...

_markdown = MarkdownIt("commonmark").enable("table")
_SLUG_KEEPS = {"Nd", "Nl", "Pc"}  # digits, letter-numbers, connector punctuation such as `_`


def github_slug(heading: str) -> str:
    """The id GitHub gives a heading (github-slugger's rule): lowercased; letters, marks,
    digits, connector punctuation (`_`), `-` and spaces kept, every other character removed;
    each space a hyphen."""
    kept = (c for c in heading.lower() if c in " -" or unicodedata.category(c) in _SLUG_KEEPS
            or unicodedata.category(c)[0] in "LM")
    return "".join(kept).replace(" ", "-")


def _inline_text(token) -> str:
    """A heading's text as rendered: the words and code spans, without the markup."""
    return "".join(c.content for c in token.children or () if c.type in ("text", "code_inline"))


def anchors_and_links(text: str) -> tuple[set[str], list[str]]:
    """The heading anchors a page has (repeated headings get -1, -2, ... as on GitHub) and the
    targets of its links and images; code blocks and code spans hold neither."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    links: list[str] = []
    tokens = _markdown.parse(text)
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            slug = github_slug(_inline_text(tokens[i + 1]))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
        for child in token.children or ():
            if child.type == "link_open":
                links.append(child.attrGet("href"))
            elif child.type == "image":
                links.append(child.attrGet("src"))
    return anchors, links


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file is missing or whose anchor names no heading there."""
    _, links = anchors_and_links(page.read_text(encoding="utf-8"))
    broken = []
    for link in links:
        if EXTERNAL.match(link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / unquote(path)).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file {target}")
        elif anchor and target.suffix == ".md":
            anchors, _ = anchors_and_links(target.read_text(encoding="utf-8"))
            if unquote(anchor) not in anchors:
                broken.append(f"{link}: no heading #{anchor} in {target.name} (it has {sorted(anchors)})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert not broken_links(page), "\n".join(broken_links(page))


def test_readme_is_short_enough_to_read_in_five_minutes():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_headings_are_named_as_github_names_them():
    assert github_slug("Resume, failures, exactness") == "resume-failures-exactness"
    assert github_slug("`gpu`: Whisper large-v3-turbo and a Llama judge") == "gpu-whisper-large-v3-turbo-and-a-llama-judge"
    assert github_slug("The portable llama.cpp build") == "the-portable-llamacpp-build"
    assert github_slug("Install, outputs, tests") == "install-outputs-tests"
    assert github_slug("snake_case and ≥ 3² — café") == "snake_case-and--3--café"


def test_the_checker_finds_a_missing_file_a_missing_anchor_and_nothing_else(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md#a-section) [repeat](other.md#a-section-1) [here](#page) [web](https://x.org/#no)\n"
        "[gone](missing.md) [no anchor](other.md#nowhere) [no local anchor](#nowhere)\n\n"
        "`[in code](missing.md)`\n\n```\n[in a block](missing.md)\n```\n")
    found = broken_links(page)
    assert [f.split(":")[0] for f in found] == ["missing.md", "other.md#nowhere", "#nowhere"], found
