"""The README and docs/ hold together: every relative link names a file that exists, every `#anchor` names a heading
of its target as GitHub slugs it, and the README stays a short path in (at most 25 KB) with the rest in docs/."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 25 * 1024  # bytes

FENCE = re.compile(r"^ {0,3}(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
HTML_ANCHOR = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']""")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows) or ")".
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto:, file: ...


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def _prose(text: str) -> str:
    """The page with fenced code blocks blanked (line numbers kept), so a link may span lines."""
    kept = dict(_prose_lines(text))
    return "\n".join(kept.get(number, "") for number in range(1, text.count("\n") + 2))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text without markup, lowercased, punctuation dropped, spaces to hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("**", "").replace("__", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters and digits of any script, and "_"
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page offers: its headings' slugs (a repeated slug gets -1, -2, ... as on GitHub) and HTML ids."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _prose_lines(page.read_text()):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every relative link in the page's prose (code blocks and code spans are not links)."""
    prose = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), _prose(page.read_text()))
    return [(prose.count("\n", 0, m.start()) + 1, m.group(1)) for m in LINK.finditer(prose)
            if not EXTERNAL.match(m.group(1))]


LINKS = [(page, number, target) for page in PAGES for number, target in links(page)]


def test_slug_follows_github() -> None:
    facts = "Facts DiStack relies on, and what is not verified"
    assert slug(facts) == "facts-distack-relies-on-and-what-is-not-verified"
    assert slug("Roll out a new image or model; restart; logs") == "roll-out-a-new-image-or-model-restart-logs"
    assert slug("What `make synth` prints") == "what-make-synth-prints"
    assert slug("Moving from Neuron 2.32 to 2.33") == "moving-from-neuron-232-to-233"
    assert slug("Set-up and test time") == "set-up-and-test-time"


def test_the_pages_link_to_each_other() -> None:
    readme_targets = {target.split("#")[0] for page, _, target in LINKS if page.name == "README.md"}
    assert {"docs/configuration.md", "docs/elasticity.md", "docs/observability.md", "docs/facts.md",
            "docs/development.md"} <= readme_targets
    assert len(LINKS) > 20


@pytest.mark.parametrize("page,number,target", LINKS,
                         ids=[f"{p.relative_to(ROOT).as_posix()}:{n}:{t}" for p, n, t in LINKS])
def test_relative_link_resolves(page: Path, number: int, target: str) -> None:
    where = f"{page.relative_to(ROOT).as_posix()}:{number}: {target}"
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    assert resolved.exists(), f"{where}: no such file {resolved}"
    if anchor:
        assert resolved.suffix == ".md", f"{where}: an anchor into a file that is not Markdown"
        offered = anchors(resolved)
        assert anchor in offered, f"{where}: no heading with anchor #{anchor} (has: {', '.join(sorted(offered))})"


def test_readme_is_at_most_25_kb() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, (f"README.md is {size} bytes, over {README_LIMIT}: move reference material to docs/ "
                                  "and link it")


def _layout() -> list[str]:
    """The bullets of docs/development.md's Layout section, one string per top-level entry."""
    text = (ROOT / "docs" / "development.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return ["- " + item for item in re.split(r"^- ", section, flags=re.M)[1:]]


def test_layout_names_what_exists() -> None:
    """Every file or folder the Layout names exists: at the top level, or under its entry's folder."""
    missing = []
    for item in _layout():
        top = re.match(r"- `([^`]+)`", item).group(1)
        assert (ROOT / top).exists(), f"Layout names `{top}`, which does not exist"
        for name in re.findall(r"`([\w./*-]+)`", item):
            if name.startswith(("/", "-")) or not re.search(r"[./]", name):
                continue
            base = ROOT / top if top.endswith("/") else ROOT
            if not any([*ROOT.glob(name), *base.glob(name), *base.rglob(name.rstrip("/"))]):
                missing.append(f"{top}: {name}")
    assert not missing, f"docs/development.md's Layout names what does not exist: {missing}"


def test_layout_names_every_top_level_folder() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    folders = {path.split("/")[0] + "/" for path in tracked.stdout.splitlines() if "/" in path}
    named = {re.match(r"- `([^`]+)`", item).group(1) for item in _layout()}
    assert not {f for f in folders if not f.startswith(".")} - named, "docs/development.md's Layout misses a folder"
