"""Every relative link and image in the project's markdown points at a file that exists (and its anchor)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(text: str) -> set[str]:
    """GitHub's anchors for a markdown file's headings (lower case, punctuation dropped, spaces to '-')."""
    found = set()
    for heading in re.findall(r"^#+\s+(.+)$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)  # code blocks hold no links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # http:, mailto: ... not checked


def _broken(doc: Path) -> list[str]:
    """The relative links of ``doc`` whose file is missing, or whose markdown file has no such heading."""
    broken = []
    for target in _links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
            broken.append(f"{target}: no heading for #{anchor} in {dest.name}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_relative_links_resolve(doc: Path) -> None:
    broken = _broken(doc)
    assert not broken, f"{doc.name}: " + "; ".join(broken)


def test_the_check_finds_a_broken_link(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    (tmp_path / "there.md").write_text("# A heading\n\n## Its part\n")
    (tmp_path / "pic.png").write_bytes(b"")
    doc.write_text(
        "# Here\n[ok](there.md#a-heading) [gone](missing.md) [bad anchor](there.md#nope) [web](https://x.y)\n"
        "[part](there.md#its-part) [self](#here) [not here](#gone) ![image](pic.png) ![no image](gone.png)\n"
        "```\n[in code](nowhere.md)\n```\n"
    )
    assert _broken(doc) == [
        f"missing.md: no file {tmp_path.resolve() / 'missing.md'}",
        "there.md#nope: no heading for #nope in there.md",
        "#gone: no heading for #gone in x.md",
        f"gone.png: no file {tmp_path.resolve() / 'gone.png'}",
    ]
