"""The repository is self-contained: code, tests and benchmarks cite its own docs/ pages (which
must exist, with the cited sections), never documents outside it (such as the reference notes
beside the checkout)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p for folder in ("dpose_core", "dpose_blender", "tests", "bench", "farm", "docs")
    for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".md")
) + [REPO / "README.md"]  # fmt: skip
CITATION = re.compile(r"docs/([\w-]+\.md)(?:#([\w-]+))?")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in page.read_text().splitlines()
            if line.startswith("#")}  # fmt: skip


def test_every_cited_docs_page_and_section_exists():
    cited = {(m[1], m[2]) for p in SOURCES for m in CITATION.finditer(p.read_text())}
    assert len(cited) > 10
    missing = [f"docs/{page}" + (f"#{anchor}" if anchor else "") for page, anchor in cited
               if not (REPO / "docs" / page).is_file()
               or (anchor and anchor not in _anchors(REPO / "docs" / page))]  # fmt: skip
    assert missing == []


def test_nothing_cites_documents_outside_the_repository():
    outside = re.compile("spec " + "§|" + r"\.\./" + "shared|/work/" + "shared")
    hits = [f"{p.relative_to(REPO)}:{n}" for p in SOURCES if p != Path(__file__)
            for n, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]
    assert hits == []
