"""Every relative link in the README and docs/ lands on a file inside the repository.

A link is a markdown link or image ``[text](target)``, a reference definition
``[name]: target``, or a path in inline code that starts with ``./`` or ``../`` (a file the
text points the reader to). Web addresses (``https:``, ``mailto:``) and pure ``#anchors`` are
left alone; an anchor after a path is dropped. Code blocks are not read.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(][^)]*)?\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
CODE_PATH = re.compile(r"\.\.?/\S+")
EXTERNAL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:")          # https:, mailto:, ...


def _blank(match: re.Match) -> str:
    """The matched text as spaces, newlines kept, so offsets and line numbers stay put."""
    return re.sub(r"[^\n]", " ", match.group(0))


def links(text: str) -> list[tuple[int, str]]:
    """``(line, target)`` of every link in a markdown text, in order."""
    text = FENCE.sub(_blank, text)
    found = [(m.start(2), m.group(2)) for m in CODE_SPAN.finditer(text)
             if CODE_PATH.fullmatch(m.group(2).strip())]
    prose = CODE_SPAN.sub(_blank, text)
    found += [(m.start(1), m.group(1).strip("<>")) for m in LINK.finditer(prose)]
    found += [(m.start(1), m.group(1).strip("<>")) for m in REFERENCE.finditer(prose)]
    return [(text.count("\n", 0, at) + 1, target.strip()) for at, target in sorted(found)]


def broken_links(doc: Path, root: Path) -> list[str]:
    """``doc:line: target ...`` for every relative link of ``doc`` that leaves ``root`` or
    names no file."""
    problems = []
    for line, target in links(doc.read_text()):
        path = unquote(target.split("#")[0].split("?")[0])
        if not path or EXTERNAL.match(path):
            continue
        where = (root / path.lstrip("/")) if path.startswith("/") else (doc.parent / path)
        resolved = where.resolve()
        here = f"{doc.relative_to(root)}:{line}: {target}"
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{here} leads outside the repository")
        elif not resolved.exists():
            problems.append(f"{here} names no file ({resolved.relative_to(root.resolve())})")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve_inside_the_repository(doc):
    problems = broken_links(doc, ROOT)
    assert not problems, ("a link to a file of the repository, relative to the document: fix "
                          "the path, or keep the fact and drop the link:\n  "
                          + "\n  ".join(problems))


def test_the_scanner_sees_the_docs_and_their_links():
    """Guard against the test above passing vacuously."""
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/design.md", "docs/performance.md"} <= names
    assert ("docs/gpu.md" in {t for _, t in links((ROOT / "README.md").read_text())})


def test_a_link_that_leaves_the_repository_or_names_no_file_is_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "gpu.md").write_text("# GPU\n")
    doc = tmp_path / "docs" / "a.md"
    doc.write_text(
        "[fine](gpu.md#install) and ![also fine](./gpu.md) and [web](https://example.org/x.md)\n"
        "[gone](missing.md) and [up](../../outside.md) and [anchor](#here)\n"
        "From `../shared/DESIGN.md`, and `../docs/gpu.md` is fine; `x/y.md` is only code.\n"
        "```\n[in a code block](nowhere.md)\n```\n"
        "[wrapped\ntext](also-missing.md \"a title\")\n\n"
        "[ref]: <../nope.md>\n")
    assert broken_links(doc, tmp_path) == [
        "docs/a.md:2: missing.md names no file (docs/missing.md)",
        "docs/a.md:2: ../../outside.md leads outside the repository",
        "docs/a.md:3: ../shared/DESIGN.md names no file (shared/DESIGN.md)",
        "docs/a.md:8: also-missing.md names no file (docs/also-missing.md)",
        "docs/a.md:10: ../nope.md names no file (nope.md)",
    ]
