"""The documentation holds together: the README stays a short landing page that starts with the two
commands, every relative link in the README and in docs/ reaches a file of the repository, every page
is in the site's navigation, every picture in docs/ is shown on a page, and every `docs/recipe.md §N`
that the code cites is a section of that page. (`mkdocs build --strict`, run by CI with the [docs]
extra, checks the rendered site; these checks need nothing but the files.)"""

from __future__ import annotations

import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TWO_COMMANDS = (
    "python3.11 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python main.py\n"
    ".venv/bin/python -m pytest\n"
)
# Markdown links and images: [text](target) / ![alt](target); the target up to a space or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"```.*?```", re.S)
# Where the code and configuration live (the repository's own folders, not the virtualenv).
SOURCE_FOLDERS = ("efficientnet_tf", "hparams", "data", "export", "tests", "benchmarks")


def _pages() -> list[pathlib.Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts)


def _links(path: pathlib.Path) -> list[str]:
    """Relative link targets of a Markdown file, outside code blocks, without their #anchor."""
    text = CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))
    targets = [t.split("#", 1)[0] for t in LINK.findall(text)]
    return [t for t in targets if t and not re.match(r"[a-z]+:", t)]


def test_the_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    first_block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first_block and first_block.group(1) == TWO_COMMANDS
    assert text.index("```") < text.index("\n## "), "the two commands come before the first section"


def test_every_relative_link_reaches_a_file_of_the_repository():
    dangling = []
    for page in [ROOT / "README.md", *_pages()]:
        for target in _links(page):
            if not (page.parent / target).resolve().exists():
                dangling.append(f"{page.relative_to(ROOT)}: {target}")
    assert not dangling, dangling


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    return [p for item in node for p in _nav_pages(item)]


def test_every_page_is_in_the_navigation_and_every_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = _nav_pages(config["nav"])
    assert len(listed) == len(set(listed)), "a page is listed twice"
    assert [p for p in listed if not (DOCS / p).is_file()] == []
    pages = {str(p.relative_to(DOCS)) for p in _pages()}
    assert sorted(pages - set(listed)) == [], "pages missing from the navigation"


def test_every_picture_in_docs_is_shown_on_a_page():
    shown = {(page.parent / t).resolve() for page in [*_pages(), ROOT / "README.md"] for t in _links(page)}
    pictures = {p.resolve() for p in DOCS.rglob("*.png")}
    assert sorted(str(p.relative_to(DOCS)) for p in pictures - shown) == []


def test_every_recipe_section_the_code_cites_exists():
    headings = set(re.findall(r"^## (\d+)\. ", (DOCS / "recipe.md").read_text(encoding="utf-8"), re.M))
    sources = [p for folder in SOURCE_FOLDERS for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml")]
    cited: dict[str, list[str]] = {}
    for path in sources:
        for section in re.findall(r"docs/recipe\.md §(\d+)", path.read_text(encoding="utf-8")):
            cited.setdefault(section, []).append(str(path.relative_to(ROOT)))
    assert len(cited) >= 4, cited  # defaults, block table, published figures, augmentation at least
    assert {s: files for s, files in cited.items() if s not in headings} == {}
    old_name = "RECIPE" + ".md"  # a notes file the repository never held
    assert [str(p) for p in sources if old_name in p.read_text(encoding="utf-8")] == []
