"""The repository stands on its own (issue 15 point 8): no shipped file points a reader at the
project's notes outside it, and every relative link in the docs leads somewhere that exists.

The facts the code relies on live in docs/twilio-facts.md and docs/contract.md; comments and
docs cite those. Tests may read a sibling folder only as an optional extra that skips without it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.paths import REPO_ROOT

# What ships or runs: the docs, the code, the chart, the configuration, the benchmark, the scripts.
SHIPPED_FILES = ("README.md", "Dockerfile", "pyproject.toml", ".dockerignore")
SHIPPED_DIRS = ("docs", "proxy", "helm", "config", "bench", "scripts", "model")
SKIPPED_PARTS = {"__pycache__", "node_modules", ".mypy_cache", ".ruff_cache", ".pytest_cache"}

# References that only make sense next to a folder this repository does not contain.
OUTSIDE = ("../shared", "TWILIO-FACTS", "SPEC.md")
# Section citations of that outside contract ("SPEC §3.4"), where a reader of the repo looks.
SPEC_CITATION = re.compile(r"\bSPEC\b")
CITATION_FREE = ("README.md", "docs", "proxy")


def _text_files(*names: str) -> Iterator[tuple[str, str]]:
    for name in names:
        path = REPO_ROOT / name
        paths = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in paths:
            if not file.is_file() or SKIPPED_PARTS & set(file.relative_to(REPO_ROOT).parts):
                continue
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # images and other binaries
            if "\0" not in text:
                yield file.relative_to(REPO_ROOT).as_posix(), text


def test_nothing_shipped_points_outside_the_repository() -> None:
    found = [
        f"{name}:{number}: {line.strip()}"
        for name, text in _text_files(*SHIPPED_FILES, *SHIPPED_DIRS)
        for number, line in enumerate(text.splitlines(), 1)
        if any(needle in line for needle in OUTSIDE)
    ]
    assert not found, "cite docs/contract.md or docs/twilio-facts.md instead:\n" + "\n".join(found)


def test_docs_and_code_cite_the_contract_in_the_repository() -> None:
    found = [
        f"{name}:{number}: {line.strip()}"
        for name, text in _text_files(*CITATION_FREE)
        for number, line in enumerate(text.splitlines(), 1)
        if SPEC_CITATION.search(line)
    ]
    assert not found, "cite docs/contract.md#… instead of SPEC §…:\n" + "\n".join(found)


def test_a_test_that_reads_a_sibling_folder_skips_without_it() -> None:
    """Today only tests/e2e/test_sandbox_contract.py does: Twilio's OpenAPI schema, if it is there."""
    for name, text in _text_files("tests"):
        if name.endswith(("test_docs_self_contained.py", "tests/paths.py")):
            continue  # this test, and the one module that names the folder (SHARED_DIR)
        if "../shared" in text or "SHARED_DIR" in text or re.search(r'/\s*"shared"', text):
            assert "skipif" in text, f"{name} reads outside the repository without skipping"


# -- links ------------------------------------------------------------------------------------

MARKDOWN = sorted(
    {
        REPO_ROOT / "README.md",
        *(REPO_ROOT / "docs").glob("*.md"),
        *(REPO_ROOT / "helm").rglob("README.md"),
    }
    | {
        REPO_ROOT / name / "README.md"
        for name in SHIPPED_DIRS
        if (REPO_ROOT / name / "README.md").is_file()
    }
)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
EXPLICIT_ANCHOR = re.compile(r"""\b(?:id|name)=["']([^"']+)["']""")


def _prose(text: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    heading = re.sub(r"<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(file: Path) -> set[str]:
    text = file.read_text(encoding="utf-8")
    anchors = set(EXPLICIT_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", text)):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _relative_links(file: Path) -> Iterator[str]:
    for target in LINK.findall(_prose(file.read_text(encoding="utf-8"))):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, mailto:, …
            yield target


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_every_relative_link_leads_to_a_file_and_anchor_that_exist(doc: Path) -> None:
    broken = []
    for target in _relative_links(doc):
        path_part, _, anchor = target.partition("#")
        file = (doc.parent / unquote(path_part)).resolve() if path_part else doc
        if not file.is_relative_to(REPO_ROOT):
            broken.append(f"{target}: outside the repository")
        elif not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and unquote(anchor) not in _anchors(file):
            broken.append(f"{target}: no such anchor in {file.relative_to(REPO_ROOT).as_posix()}")
    assert not broken, "\n".join(broken)


def test_the_docs_index_the_twilio_facts_and_the_contract() -> None:
    for name in ("twilio-facts.md", "contract.md"):
        assert (REPO_ROOT / "docs" / name).is_file(), name
    linked = {
        (doc.parent / target.partition("#")[0]).resolve()
        for doc in MARKDOWN
        for target in _relative_links(doc)
        if target.partition("#")[0]
    }
    assert REPO_ROOT / "docs" / "twilio-facts.md" in linked
    assert REPO_ROOT / "docs" / "contract.md" in linked
