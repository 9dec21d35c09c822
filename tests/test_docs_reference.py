"""The documentation site's promises that need no build (the strict build itself: tests/test_docs_build.py).

* every name of ``cxr_embed.__all__`` has an entry ``::: cxr_embed.<name>`` in ``docs/api/``, and
  every entry names something that exists;
* every ``cxr-embed`` subcommand has a section in the command-line reference;
* the narrative pages carry no hand-copied signatures as headings (the reference has them);
* ``docs/architecture.md`` is the first page; every narrative page is in the nav;
* every script of ``examples/`` is in the gallery's configuration (run, or shown and not run).
"""
from __future__ import annotations

import argparse
import ast
import re

import cxr_embed
from conftest import ROOT

DOCS = ROOT / "docs"
API = DOCS / "api"
ENTRY = re.compile(r"^:::\s+(cxr_embed(?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*$", re.MULTILINE)
MARKER = re.compile(r"^<!--\s*cli-help:\s*([a-z][a-z\- ]*?|)\s*-->\s*$", re.MULTILINE)


def _entries() -> dict[str, str]:
    """Every ``::: cxr_embed.x`` of docs/api/ -> the page it is on."""
    found = {}
    for page in sorted(API.glob("*.md")):
        for path in ENTRY.findall(page.read_text(encoding="utf-8")):
            assert path not in found, f"{path} has two reference entries ({found[path]}, {page.name})"
            found[path] = page.name
    return found


def test_every_public_name_has_a_reference_entry():
    documented = {path.split(".", 1)[1] for path in _entries() if path.count(".") == 1}
    missing = [name for name in cxr_embed.__all__ if name not in documented]
    assert not missing, f"no '::: cxr_embed.<name>' entry in docs/api/*.md for {missing}"


def _defines(module_path: str, name: str) -> bool:
    """Whether the source of ``module_path`` (dotted) defines ``name`` at its top level (nothing imported)."""
    rel = module_path.split(".")
    for candidate in (ROOT.joinpath(*rel).with_suffix(".py"), ROOT.joinpath(*rel, "__init__.py")):
        if candidate.is_file():
            tree = ast.parse(candidate.read_text(encoding="utf-8"))
            return any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name for n in tree.body)
    return False


def test_every_reference_entry_names_an_existing_object():
    bad = []
    for path, page in _entries().items():
        module, _, name = path.rpartition(".")
        if module == "cxr_embed":
            if name not in cxr_embed.__all__:
                bad.append(f"{page}: {path} is not in cxr_embed.__all__")
        elif not _defines(module, name):
            bad.append(f"{page}: {module} defines no {name}")
    assert not bad, bad


def _cli_commands() -> list[str]:
    from cxr_embed.cli import build_parser

    names: list[str] = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        names.append(name)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(subparser, f"{name} {sub}".strip())

    walk(build_parser(), "")
    return names


def test_every_cli_subcommand_has_a_reference_section():
    page = (API / "cli.md").read_text(encoding="utf-8")
    sections = [" ".join(m.split()) for m in MARKER.findall(page)]
    commands = _cli_commands()
    assert len(commands) > 10 and "store verify" in commands
    missing = [c for c in commands if c not in sections]
    unknown = [s for s in sections if s not in commands]
    assert not missing, f"docs/api/cli.md has no '<!-- cli-help: NAME -->' for {missing}"
    assert not unknown, f"docs/api/cli.md names subcommands that do not exist: {unknown}"
    assert len(sections) == len(set(sections)), "a subcommand has two sections"


def test_narrative_pages_have_no_signature_headings():
    # "## `extract(manifest_or_paths, backbone, store, *, batch_size=32, ...)`": the reference shows
    # signatures, generated from the code; a copy in a heading drifts from it.
    signature = re.compile(r"^#+ [^\n]*`[A-Za-z_][\w.]*\((?!\.)[^`\n]*\)[^`\n]*`", re.MULTILINE)  # not "x.csv(.gz)"
    found = [f"{p.name}: {m.group(0)}" for p in sorted(DOCS.glob("*.md"))
             for m in signature.finditer(p.read_text(encoding="utf-8"))]
    assert not found, found


def _nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text[text.index("\nnav:\n"):]
    return re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?([\w/.-]+\.md|generated/gallery)\s*$", nav, re.MULTILINE)


def test_architecture_is_the_first_page_and_every_page_is_in_the_nav():
    pages = _nav_pages()
    assert pages[0] == "architecture.md", pages[:3]
    on_disk = [str(p.relative_to(DOCS)) for p in sorted(DOCS.glob("*.md"))]
    on_disk += [str(p.relative_to(DOCS)) for p in sorted(API.glob("*.md"))]
    missing = [p for p in on_disk if p not in pages]
    assert not missing, f"pages not in the nav of mkdocs.yml: {missing}"
    assert "generated/gallery" in pages


def test_every_example_is_in_the_gallery_configuration():
    tree = ast.parse((DOCS / "_tools" / "gallery_conf.py").read_text(encoding="utf-8"))
    values = {t.id: n.value for n in tree.body if isinstance(n, (ast.Assign,))
              for t in n.targets if isinstance(t, ast.Name)}
    run = [k.value for k in values["EXAMPLES"].keys]
    shown = ast.literal_eval(values["NOT_RUN"])
    scripts = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
    assert sorted(run + shown) == scripts, "list each script of examples/ in EXAMPLES (run) or NOT_RUN"
    assert (ROOT / "examples" / "README.md").is_file()  # the gallery's header
